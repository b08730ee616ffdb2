"""Pinned namespaces: new net/ipc/uts namespaces bind-mounted onto files, so they outlive any process.

All namespaces of a pod are made in one step, by syscalls in a short-lived thread (unshare affects only the
calling thread for these kinds): no fork or exec, so a pod's namespaces cost well under a millisecond. The
thread also sets the hostname, brings loopback up and writes the namespaced sysctls while it is inside.
The thread is thrown away afterwards, so a failure to switch back can never leak a namespace into the
daemon's other threads.

A pod with its own user namespace is the exception: the kernel creates a user namespace only for a
single-threaded caller, so a short-lived `unshare` process makes it together with the pod's other namespaces
(which it then owns), the daemon writes the id maps, and the thread joins those namespaces instead of making them.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import platform
import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from hostos import libc
from hostos.libc import LIBC, MNT_DETACH, MS_BIND

from .errors import InvalidSysctl, NamespaceError

CLONE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
UNSHARE_OPTIONS = {"net": "--net", "ipc": "--ipc", "uts": "--uts"}
HOLDER_TIMEOUT = 10.0  # how long the `unshare` making a user namespace may take to be ready

# One id map line: (id inside the namespace, id outside, length).
IDMap = tuple[int, int, int]
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

# setresuid as a raw syscall changes only the calling thread (glibc's wrapper changes every thread).
_SYS_SETRESUID = {"x86_64": 117, "aarch64": 147}.get(platform.machine())



def _check(result: int, what: str) -> None:
    if result != 0:
        raise NamespaceError(libc.last_error(what).strerror)


def start_in_fresh_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
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

    def started(starting: asyncio.Future[None]) -> None:
        if not starting.cancelled() and starting.exception() is not None:
            deliver(False, starting.exception())

    # Started from a worker thread: Thread.start waits until the new thread runs, and the event loop waited 100 ms
    # and more there while 50 pods started at once on a loaded host.
    thread = threading.Thread(target=target, name="netns", daemon=True)
    loop.run_in_executor(None, thread.start).add_done_callback(started)
    return future


async def _await_thread(future: asyncio.Future[Any], undo: Callable[[Any], None]) -> Any:
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


def _bind(source: str, target: Path, what: str) -> None:
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        _check(LIBC.mount(source.encode(), str(target).encode(), None, MS_BIND, None),
               f"bind-mounting {what} namespace onto {target}")
    except NamespaceError:
        os.unlink(target)
        raise


@contextmanager
def _thread_euid(uid: int | None) -> Iterator[None]:
    """Act as `uid` in this thread only: the kernel lets only a user namespace's root (as the host sees that
    uid), not host root, write the IPC sysctls of an IPC namespace the user namespace owns."""
    if uid is None:
        yield
        return
    if _SYS_SETRESUID is None:
        raise NamespaceError(f"setting sysctls in a pod user namespace is not supported on {platform.machine()}")
    _check(LIBC.syscall(_SYS_SETRESUID, -1, uid, -1), f"switching to uid {uid}")
    try:
        yield
    finally:
        LIBC.syscall(_SYS_SETRESUID, -1, 0, -1)  # the thread ends right after either way


def _pin_in_thread(directory: Path, kinds: tuple[str, ...], hostname: str | None,
                   sysctls: Mapping[str, str], holder: int | None = None,
                   root_uid: int | None = None) -> dict[str, Path]:
    """Make (or, with `holder`, join that process's) namespaces, set them up from inside, pin them.

    `root_uid`: the host uid of the holder's user namespace root, which writes the IPC sysctls.
    """
    originals = {k: os.open(f"/proc/thread-self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds}
    pinned: dict[str, Path] = {}
    try:
        if holder is None:
            flags = 0
            for k in kinds:
                flags |= CLONE_FLAGS[k]
            _check(LIBC.unshare(flags), f"unshare {','.join(kinds)}")
        else:
            for k in kinds:
                fd = os.open(f"/proc/{holder}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _check(LIBC.setns(fd, CLONE_FLAGS[k]), f"entering the new {k} namespace")
                finally:
                    os.close(fd)
        if hostname is not None and "uts" in kinds:
            name = hostname.encode()
            _check(LIBC.sethostname(name, len(name)), "sethostname")
        if "net" in kinds:
            try:
                _bring_loopback_up()
            except OSError as e:
                raise NamespaceError(f"bringing loopback up: {e.strerror}") from e
        for key, value in sysctls.items():
            try:
                ipc = not key.replace("/", ".").startswith("net.")  # net ones want host root's capability
                with _thread_euid(root_uid if ipc else None), open(sysctl_path(key), "w") as f:
                    f.write(value)
            except OSError as e:
                dotted = key.replace("/", ".")
                if e.errno == errno.ENOENT:
                    raise InvalidSysctl(f"sysctl {dotted} does not exist in this kernel") from e
                if e.errno in (errno.EINVAL, errno.EPERM, errno.EACCES):
                    raise InvalidSysctl(f"sysctl {dotted} refuses the value {value!r}: {e.strerror}") from e
                raise NamespaceError(f"setting sysctl {dotted}={value}: {e.strerror}") from e
        if holder is not None:
            _bind(f"/proc/{holder}/ns/user", directory / "user", "user")
            pinned["user"] = directory / "user"
        for k in kinds:
            _bind(f"/proc/thread-self/ns/{k}", directory / k, k)
            pinned[k] = directory / k
        return pinned
    except BaseException:
        for path in pinned.values():
            unpin_namespace(path)
        raise
    finally:
        for k, fd in originals.items():
            LIBC.setns(fd, CLONE_FLAGS[k])  # best effort: the thread ends right after either way
            os.close(fd)


async def pin_namespaces(directory: Path, kinds: Iterable[str] = ("net", "ipc", "uts"), hostname: str | None = None,
                         sysctls: Mapping[str, str] | None = None, uid_map: Iterable[IDMap] = (),
                         gid_map: Iterable[IDMap] = (), userns: bool = False) -> dict[str, Path]:
    """Create new namespaces of `kinds` and pin each at `directory/<kind>`; undone entirely on failure.

    With `userns`, a new user namespace with these id maps is pinned at `directory/user` too, and owns the
    others (so that a runtime inside it may mount sysfs, set the hostname, and so on).
    `sysctls` must already be validated as belonging to the namespaces being created.
    """
    kinds = tuple(sorted(set(kinds)))
    unknown = set(kinds) - set(CLONE_FLAGS)
    if unknown:
        raise NamespaceError(f"unsupported namespace kinds {sorted(unknown)}")
    if not kinds and not userns:
        return {}
    Path(directory).mkdir(parents=True, exist_ok=True)
    if not userns:
        future = start_in_fresh_thread(_pin_in_thread, Path(directory), kinds, hostname, dict(sysctls or {}))
        pinned: dict[str, Path] = await _await_thread(future, _unpin_all)
        return pinned
    holder = await _start_holder(kinds)
    try:
        _write_id_map(holder.pid, "uid_map", uid_map)
        _write_id_map(holder.pid, "gid_map", gid_map)
        root_uid = next((outside for inside, outside, _ in uid_map if inside == 0), None)
        future = start_in_fresh_thread(_pin_in_thread, Path(directory), kinds, hostname, dict(sysctls or {}),
                                       holder.pid, root_uid)
        pinned = await _await_thread(future, _unpin_all)
        return pinned
    finally:
        await _stop_holder(holder)


def _unpin_all(pinned: dict[str, Path]) -> None:
    for path in pinned.values():
        unpin_namespace(path)


async def _start_holder(kinds: tuple[str, ...]) -> asyncio.subprocess.Process:
    """A process in a new user namespace and new `kinds` namespaces owned by it, once it is in them."""
    argv = ["unshare", "--user", *(UNSHARE_OPTIONS[k] for k in kinds), "--", "sh", "-c", "echo ready; exec cat"]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except OSError as e:
        raise NamespaceError(f"starting `unshare` to make the pod's user namespace: {e}") from e
    try:
        assert proc.stdout is not None  # (PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), HOLDER_TIMEOUT)
    except BaseException:
        await _stop_holder(proc)
        raise
    if line != b"ready\n":
        err = (await _stop_holder(proc)).decode(errors="replace").strip()
        raise NamespaceError(f"creating the pod's user namespace: {' '.join(argv[:-4])} failed: "
                             f"{err or 'it exited at start'}")
    return proc


async def _stop_holder(proc: asyncio.subprocess.Process) -> bytes:
    """End the holder (the pinned namespaces outlive it); its stderr."""
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    _, err = await proc.communicate()
    return err or b""


def _write_id_map(pid: int, name: str, mappings: Iterable[IDMap]) -> None:
    text = "".join(f"{inside} {outside} {length}\n" for inside, outside, length in mappings)
    try:
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)
    except OSError as e:
        raise NamespaceError(f"writing the user namespace's {name} {text.strip()!r}: {e.strerror}") from e


def unpin_namespace(path: Path | str) -> None:
    """Unmount and delete a pinned namespace file; a missing or already unmounted file is fine."""
    while not (err := libc.umount2(path, MNT_DETACH)):
        pass  # stacked mounts (a crash mid-pin and a retry) all come off
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
        _check(LIBC.setns(target, CLONE_FLAGS["net"]), f"entering network namespace {netns}")
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setblocking(False)
        return sock
    finally:
        LIBC.setns(original, CLONE_FLAGS["net"])
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
    sock: socket.socket = await _await_thread(future, lambda sock: sock.close())
    return sock
