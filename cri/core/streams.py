"""The streaming backend over the container core: exec through the OCI runtime, attach through conmon.

exec runs ``<runtime> exec`` in the foreground, so the runtime's exit status is the command's.  Without a tty
the command's stdio are pipes; with one, the runtime hands us the pty master over a console socket and the
command's output is whatever the terminal shows.  attach talks to conmon's attach socket (SOCK_SEQPACKET: each
packet from conmon is one pipe byte then data; what we send is the container's stdin) and resizes through
conmon's control fifo.  Everything a session opens is closed and killed when it ends or the client leaves.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TYPE_CHECKING

from cri.errors import FailedPrecondition, Internal, InvalidArgument
from cri.oci.conmon import BundlePaths, Conmon, ConmonError
from cri.oci.execpipes import Orphan
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from cri.streaming.backend import InputStream, OutputStream, TerminalSize

if TYPE_CHECKING:  # (the container manager imports this module)
    from cri.core.containers import ContainerManager
    from cri.core.sandboxes import SandboxManager

COPY_CHUNK = 32 << 10
# After the command exits, how long output may keep flowing (a background child holding the pipe) before we stop.
OUTPUT_GRACE = 2.0
CONSOLE_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
STDOUT_PIPE, STDERR_PIPE = 2, 3
ATTACH_PACKET = 8192 + 1
EOT = b"\x04"


class CoreStreams:
    """StreamingBackend for the daemon: ``containers`` is the ContainerManager, ``sandboxes`` the SandboxManager."""

    def __init__(self, containers: ContainerManager, sandboxes: SandboxManager) -> None:
        self._containers = containers
        self._sandboxes = sandboxes

    def _running(self, container_id: str) -> ContainerRecord:
        record = self._containers.get(container_id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
        return record

    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: InputStream | None,
                   stdout: OutputStream | None, stderr: OutputStream | None,
                   resize: AsyncIterator[TerminalSize] | None) -> int:
        if not cmd:
            raise InvalidArgument("exec command must not be empty")
        record = self._running(container_id)
        runtime = self._containers.runtime(record.runtime_handler)
        scratch = Path(tempfile.mkdtemp(prefix="pycri-exec-"))  # 0700; short enough for a socket path
        pid_file = scratch / "pid"
        try:
            process_file = scratch / "process.json"
            process_file.write_text(json.dumps(exec_process(container_process(Path(record.bundle)), cmd, tty)))
            base = [runtime.path, *runtime.global_args, "exec", "--process", str(process_file),
                    "--pid-file", str(pid_file)]
            if tty:
                return await _exec_tty(base, record.id, scratch / "console", pid_file, stdin, stdout, resize)
            return await _exec_pipes(base + [record.id], pid_file, stdin, stdout, stderr)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def attach(self, container_id: str, tty: bool, stdin: InputStream | None,
                     stdout: OutputStream | None, stderr: OutputStream | None,
                     resize: AsyncIterator[TerminalSize] | None) -> None:
        record = self._running(container_id)
        bundle = Path(record.bundle)
        sock = await _connect_attach_socket(BundlePaths(bundle).attach_socket)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        try:
            output = asyncio.create_task(_attach_output(sock, stdout, stderr))
            tasks.append(output)
            if resize is not None:
                tasks.append(asyncio.create_task(_apply_resizes(resize, lambda s: Conmon.resize(bundle, s.height,
                                                                                                 s.width))))
            if stdin is not None and record.stdin:
                feeder = asyncio.create_task(_copy_in(stdin, lambda data: loop.sock_sendall(sock, data)))
                tasks.append(feeder)
                await asyncio.wait({output, feeder}, return_when=asyncio.FIRST_COMPLETED)
                if feeder.done() and not output.done():
                    if record.stdin_once and not tty:
                        sock.shutdown(socket.SHUT_WR)  # conmon closes the container's stdin
                    else:
                        return  # the client ended its input: detach, the container keeps running
            await output
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock.close()

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._sandboxes.open_port(sandbox_id, port)


# --- exec without a terminal


async def _exec_pipes(argv: list[str], pid_file: Path, stdin: InputStream | None, stdout: OutputStream | None,
                      stderr: OutputStream | None) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL)
    copies = [asyncio.create_task(_copy_out(pipe.read, sink))
              for pipe, sink in ((proc.stdout, stdout), (proc.stderr, stderr)) if sink and pipe]
    feeder = asyncio.create_task(_feed_pipe(stdin, proc.stdin)) if stdin and proc.stdin else None
    try:
        await proc.wait()
        await _finish_copies(copies)
        assert proc.returncode is not None  # (waited for)
        return _exit_code(proc.returncode)
    finally:
        await _end_process(proc, pid_file, copies + ([feeder] if feeder else []))


async def _feed_pipe(stdin: InputStream, pipe: asyncio.StreamWriter) -> None:
    try:
        while chunk := await stdin.read(COPY_CHUNK):
            pipe.write(chunk)
            await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        return  # the command stopped reading
    finally:
        pipe.close()


# --- exec with a terminal


async def _exec_tty(base: list[str], container_id: str, console_path: Path, pid_file: Path,
                    stdin: InputStream | None, stdout: OutputStream | None,
                    resize: AsyncIterator[TerminalSize] | None) -> int:
    """runc/crun only hand out the console when they detach, so the runtime starts the command and leaves; the
    command is then re-parented to the daemon (a child subreaper), and we wait for it through a pidfd."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(str(console_path))
    listener.listen(1)
    listener.setblocking(False)
    pty: _PtyMaster | None = None
    command: Orphan | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        proc = await asyncio.create_subprocess_exec(
            *base, "--detach", "--console-socket", str(console_path), container_id, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            master = await _receive_console(listener, proc)
        finally:
            stderr_text = (await proc.stderr.read()).decode(errors="replace").strip() if proc.stderr else ""
            await proc.wait()
        if master is not None:
            pty = _PtyMaster(master)
        if proc.returncode:
            raise Internal(f"exec in container {container_id}: {stderr_text}")
        command = _orphan(int(pid_file.read_text().strip()))  # from here on it is ours to reap, whatever happens
        if pty is None:
            raise Internal(f"exec in container {container_id}: the runtime sent no terminal")
        if resize is not None:
            tasks.append(asyncio.create_task(_apply_resizes(resize, pty.resize)))
        if stdin is not None:
            tasks.append(asyncio.create_task(_copy_in(stdin, pty.write, end=lambda: pty.write(EOT))))
        copies = [asyncio.create_task(_copy_out(pty.read, stdout))] if stdout else []
        tasks += copies
        try:
            code = await command.wait()
        except ChildProcessError as e:
            raise Internal("the exec'd process is not the daemon's to reap (not a child subreaper?)") from e
        await _finish_copies(copies)
        return code
    finally:
        listener.close()
        if command is not None:
            await command.kill_and_reap()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pty is not None:
            pty.close()


def _orphan(pid: int) -> Orphan:
    try:
        return Orphan(pid)
    except OSError as e:
        raise Internal(f"exec'd process {pid} is gone before it could be watched: {e}") from e


def container_process(bundle: Path) -> dict[str, Any]:
    """The container's own OCI process, from its bundle's config.json: what every exec starts from."""
    try:
        process: dict[str, Any] = json.loads(BundlePaths(bundle).config.read_text())["process"]
        return process
    except (OSError, ValueError, KeyError) as e:
        raise Internal(f"reading the container's process from {bundle}: {e}") from e


def exec_process(container_process: dict[str, Any], cmd: list[str], tty: bool) -> dict[str, Any]:
    """The OCI process an exec runs: the container's own (user, groups, capabilities, cwd, env, limits), with
    cmd as its args, and for a terminal TERM=xterm as CRI-O sets it.

    Passed whole as --process so that runc and crun agree: their exec flags differ (crun's --env replaces the
    environment, its exec takes no user from the spec)."""
    process = {**container_process, "args": list(cmd), "terminal": tty}
    process.pop("consoleSize", None)
    process.pop("oomScoreAdj", None)  # the container's score was set at its creation; lowering needs a capability
    env = list(process.get("env", []))
    if tty and not any(item.startswith("TERM=") for item in env):
        env.append("TERM=xterm")
    process["env"] = env
    return process


async def _receive_console(listener: socket.socket, proc: asyncio.subprocess.Process) -> int | None:
    """The pty master the runtime sends over the console socket (SCM_RIGHTS); None if it exits without one."""
    loop = asyncio.get_running_loop()
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    exited = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({accept, exited}, timeout=CONSOLE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if accept.done():
        conn, _ = accept.result()
    else:
        accept.cancel()
        if proc.returncode is None:
            proc.kill()
            return None
        try:  # the runtime connected and left before our accept ran: the connection waits in the backlog
            conn, _ = listener.accept()
        except BlockingIOError:
            return None
    with conn:
        fds = array.array("i")
        while True:
            try:
                _, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
                break
            except BlockingIOError:
                await _wait_fd(conn.fileno(), readable=True)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


class _PtyMaster:
    """Non-blocking reads and writes on the pty master; EIO (every slave end closed) reads as end of output."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self.fd = fd

    async def read(self, n: int) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await _wait_fd(self.fd, readable=True)
            except OSError as e:
                if e.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await _wait_fd(self.fd, readable=False)

    def resize(self, size: TerminalSize) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _resolver(future: asyncio.Future[None]) -> Callable[[], None]:
    """A reader/writer callback that resolves `future` once (the loop may call it again before removal)."""
    def resolve() -> None:
        if not future.done():
            future.set_result(None)
    return resolve


async def _wait_fd(fd: int, readable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_reader, loop.remove_reader) if readable else (loop.add_writer, loop.remove_writer)
    add(fd, _resolver(ready))
    try:
        await ready
    finally:
        remove(fd)


# --- attach


async def _connect_attach_socket(path: Path) -> socket.socket:
    """Connect to conmon's attach socket; through /proc/self/fd so that long bundle paths still fit sun_path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"container has no attach socket: {e}") from e
    try:
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/{path.name}")
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"cannot attach: conmon's socket {path}: {e}") from e
    finally:
        os.close(dir_fd)
    return sock


async def _attach_output(sock: socket.socket, stdout: OutputStream | None, stderr: OutputStream | None) -> None:
    loop = asyncio.get_running_loop()
    while packet := await loop.sock_recv(sock, ATTACH_PACKET):
        sink = {STDOUT_PIPE: stdout, STDERR_PIPE: stderr}.get(packet[0])
        if sink is not None and len(packet) > 1:
            await sink.write(packet[1:])


# --- shared


async def _copy_out(read: Callable[[int], Awaitable[bytes]], sink: OutputStream) -> None:
    while chunk := await read(COPY_CHUNK):
        await sink.write(chunk)


async def _copy_in(stdin: InputStream, write: Callable[[bytes], Awaitable[None]],
                   end: Callable[[], Awaitable[None]] | None = None) -> None:
    while chunk := await stdin.read(COPY_CHUNK):
        await write(chunk)
    if end is not None:
        await end()


async def _apply_resizes(resize: AsyncIterator[TerminalSize], apply: Callable[[TerminalSize], None]) -> None:
    async for size in resize:
        with suppress(OSError, ConmonError):
            apply(size)


async def _finish_copies(copies: list[asyncio.Task[Any]]) -> None:
    """Let the output copies end on their own (EOF), but not wait forever on a pipe a background child holds."""
    if copies:
        await asyncio.wait(copies, timeout=OUTPUT_GRACE)
        for task in copies:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error


async def _end_process(proc: asyncio.subprocess.Process, pid_file: Path, tasks: list[asyncio.Task[Any]]) -> None:
    """Kill the exec'd command if it still runs (the client left), reap the runtime, stop the copies.

    The command is killed, not the runtime: a killed runtime would orphan its half-started child.  The pid file
    appears once the command exists, so until then we keep waiting for it (or for the runtime to give up).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_TIMEOUT
    while proc.returncode is None:
        with suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            break
        if loop.time() > deadline:
            with suppress(ProcessLookupError):
                proc.kill()
            break
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    try:
        await asyncio.wait_for(proc.wait(), KILL_TIMEOUT)
    except asyncio.TimeoutError:
        with suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode
