"""Pinned namespaces: new net/ipc/uts namespaces bind-mounted onto files, so they outlive any process.

All namespaces of a pod are made in one step, by syscalls in a short-lived thread (unshare affects only the
calling thread for these kinds): no fork or exec, so a pod's namespaces cost well under a millisecond. The
thread also sets the hostname, brings loopback up and writes the namespaced sysctls while it is inside.
The thread is thrown away afterwards, so a failure to switch back can never leak a namespace into the
daemon's other threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import InvalidSysctl, NamespaceError

CLONE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"{what}: {os.strerror(err)}")


def start_in_fresh_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """Run `fn` on a new OS thread that ends afterwards, so namespace changes it makes die with it."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(deliver, False, e)
        else:
            loop.call_soon_threadsafe(deliver, True, value)

    threading.Thread(target=target, name="netns", daemon=True).start()
    return future


async def _await_thread(future: asyncio.Future, undo: Callable[[Any], None]) -> Any:
    """Await a thread's result; if the caller is cancelled, let the thread finish and undo what it made."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        try:
            undo(await future)
        except Exception:
            pass
        raise


def sysctl_path(key: str) -> Path:
    """/proc/sys path of a dotted or slashed sysctl name (already validated by the caller)."""
    if "/" in key:
        return Path("/proc/sys") / key
    return Path("/proc/sys") / key.replace(".", "/")


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _pin_in_thread(directory: Path, kinds: tuple[str, ...], hostname: str | None,
                   sysctls: Mapping[str, str]) -> dict[str, Path]:
    originals = {k: os.open(f"/proc/thread-self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds}
    pinned: dict[str, Path] = {}
    try:
        flags = 0
        for k in kinds:
            flags |= CLONE_FLAGS[k]
        _check(_libc.unshare(flags), f"unshare {','.join(kinds)}")
        if hostname is not None and "uts" in kinds:
            name = hostname.encode()
            _check(_libc.sethostname(name, len(name)), "sethostname")
        if "net" in kinds:
            try:
                _bring_loopback_up()
            except OSError as e:
                raise NamespaceError(f"bringing loopback up: {e.strerror}") from e
        for key, value in sysctls.items():
            try:
                with open(sysctl_path(key), "w") as f:
                    f.write(value)
            except OSError as e:
                dotted = key.replace("/", ".")
                if e.errno == errno.ENOENT:
                    raise InvalidSysctl(f"sysctl {dotted} does not exist in this kernel") from e
                if e.errno in (errno.EINVAL, errno.EPERM, errno.EACCES):
                    raise InvalidSysctl(f"sysctl {dotted} refuses the value {value!r}: {e.strerror}") from e
                raise NamespaceError(f"setting sysctl {dotted}={value}: {e.strerror}") from e
        for k in kinds:
            target = directory / k
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            os.close(fd)
            pinned[k] = target
            _check(_libc.mount(f"/proc/thread-self/ns/{k}".encode(), str(target).encode(), None, _MS_BIND, None),
                   f"bind-mounting {k} namespace onto {target}")
        return pinned
    except BaseException:
        for path in pinned.values():
            unpin_namespace(path)
        raise
    finally:
        for k, fd in originals.items():
            _libc.setns(fd, CLONE_FLAGS[k])  # best effort: the thread ends right after either way
            os.close(fd)


async def pin_namespaces(directory: Path, kinds: Iterable[str] = ("net", "ipc", "uts"), hostname: str | None = None,
                         sysctls: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Create new namespaces of `kinds` and pin each at `directory/<kind>`; undone entirely on failure.

    `sysctls` must already be validated as belonging to the namespaces being created.
    """
    kinds = tuple(sorted(set(kinds)))
    unknown = set(kinds) - set(CLONE_FLAGS)
    if unknown:
        raise NamespaceError(f"unsupported namespace kinds {sorted(unknown)}")
    if not kinds:
        return {}
    Path(directory).mkdir(parents=True, exist_ok=True)
    future = start_in_fresh_thread(_pin_in_thread, Path(directory), kinds, hostname, dict(sysctls or {}))
    return await _await_thread(future, lambda pinned: [unpin_namespace(p) for p in pinned.values()])


def unpin_namespace(path: Path | str) -> None:
    """Unmount and delete a pinned namespace file; a missing or already unmounted file is fine."""
    encoded = str(path).encode()
    while _libc.umount2(encoded, _MNT_DETACH) == 0:
        pass  # stacked mounts (a crash mid-pin and a retry) all come off
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOENT):
        raise NamespaceError(f"unmounting {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        os.rmdir(path)


_NSFS_DEV = os.stat("/proc/self/ns/net").st_dev


def namespace_alive(path: Path | str) -> bool:
    """True when `path` is a mounted namespace file (nsfs), not merely a leftover empty file."""
    try:
        return os.stat(path).st_dev == _NSFS_DEV
    except OSError:
        return False


def _connect_in_thread(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(target, CLONE_FLAGS["net"]), f"entering network namespace {netns}")
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setblocking(False)
        return sock
    finally:
        _libc.setns(original, CLONE_FLAGS["net"])
        os.close(original)
        os.close(target)


async def connect_in_netns(netns: Path | str, port: int, host: str = "127.0.0.1",
                           timeout: float = 10.0) -> socket.socket:
    """A non-blocking TCP socket connected to host:port inside a network namespace (for port-forward).

    A socket belongs to the namespace it was created in, so only the connect needs the thread's detour.
    """
    if not namespace_alive(netns):
        raise NamespaceError(f"network namespace {netns} does not exist")
    future = start_in_fresh_thread(_connect_in_thread, str(netns), host, port, timeout)
    return await _await_thread(future, lambda sock: sock.close())
