"""The C library, loaded once, with the argument types of the calls Python's os module does not offer."""

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
    enc = lambda s: os.fsencode(s) if s is not None else None  # noqa: E731
    return 0 if LIBC.mount(enc(source), os.fsencode(target), enc(fstype), flags, enc(data)) == 0 else ctypes.get_errno()


def umount2(target: str | os.PathLike[str], flags: int = 0) -> int:
    """umount2(2); 0 on success, else the errno (callers decide which ones mean "not mounted")."""
    return 0 if LIBC.umount2(os.fsencode(target), flags) == 0 else ctypes.get_errno()


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
