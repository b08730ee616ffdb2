"""The C library, loaded once, with the argument types of the calls Python's os module does not offer, and the
syscalls glibc has no wrapper for (the new mount API)."""

from __future__ import annotations

import ctypes
import os

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
M_ARENA_MAX = -8

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
LIBC.unshare.argtypes = [ctypes.c_int]
LIBC.setns.argtypes = [ctypes.c_int, ctypes.c_int]
LIBC.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
LIBC.syncfs.argtypes = [ctypes.c_int]
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
LIBC.inotify_init1.argtypes = [ctypes.c_int]
LIBC.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
LIBC.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
LIBC.syscall.restype = ctypes.c_long

# The new mount API's syscall numbers are the same on every architecture that has them.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000


class MountAttr(ctypes.Structure):
    """struct mount_attr of mount_setattr(2)."""
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def last_error(what: str, path: str | os.PathLike[str] | None = None) -> OSError:
    """The OSError for the errno the last failing call left, its message starting with `what`."""
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", *([os.fspath(path)] if path is not None else []))


def check(result: int, what: str) -> None:
    """Raise `last_error(what)` when a libc call returned non-zero."""
    if result != 0:
        raise last_error(what)


def mount(source: str | os.PathLike[str] | None, target: str | os.PathLike[str], fstype: str | None, flags: int,
          data: str | None = None) -> int:
    """mount(2); 0 on success, else the errno (each caller words its own error)."""
    def enc(s: str | os.PathLike[str] | None) -> bytes | None:
        return os.fsencode(s) if s is not None else None

    return 0 if LIBC.mount(enc(source), os.fsencode(target), enc(fstype), flags, enc(data)) == 0 else ctypes.get_errno()


def umount2(target: str | os.PathLike[str], flags: int = 0) -> int:
    """umount2(2); 0 on success, else the errno (callers decide which ones mean "not mounted")."""
    return 0 if LIBC.umount2(os.fsencode(target), flags) == 0 else ctypes.get_errno()


def syscall(number: int, *args: object) -> int:
    """A raw syscall, every int argument passed as a full machine word (ctypes would pass ints as 32-bit ones)."""
    result: int = LIBC.syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    return result


def attach_idmapped_clone(source: str | os.PathLike[str], target: str | os.PathLike[str], userns_fd: int) -> None:
    """Mount a clone of the mount at `source`, idmapped with the user namespace `userns_fd`, on `target`:
    open_tree(OPEN_TREE_CLONE), mount_setattr(MOUNT_ATTR_IDMAP), move_mount (kernel 5.12+)."""
    tree = syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), _OPEN_TREE_CLONE | os.O_CLOEXEC)
    if tree < 0:
        raise last_error(f"open_tree {os.fsdecode(source)}")
    try:
        attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        if syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
            raise last_error(f"idmapping a clone of {os.fsdecode(source)} (mount_setattr)")
        if syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH) < 0:
            raise last_error(f"attaching the idmapped clone of {os.fsdecode(source)} at {os.fsdecode(target)} "
                             "(move_mount)")
    finally:
        os.close(tree)


def syncfs(fd: int) -> None:
    check(LIBC.syncfs(fd), "syncfs")


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of PID 1."""
    check(LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where the C library has none (musl)."""
    fn = getattr(LIBC, "mallopt", None)
    return bool(fn is not None and fn(param, value))


def malloc_trim() -> None:
    """Hand glibc's free heap pages back to the kernel; nothing on other C libraries."""
    fn = getattr(LIBC, "malloc_trim", None)
    if fn is not None:
        fn(0)
