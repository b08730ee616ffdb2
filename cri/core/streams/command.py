"""exec: ``<runtime> exec`` in the foreground, so the runtime's exit status is the command's.  Without a tty the
command's stdio are pipes; with one, the runtime hands us the pty master over a console socket and the command's
output is whatever the terminal shows.  Whatever a session started is killed and reaped when it ends or the
client leaves."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from cri.errors import Internal
from cri.oci.execpipes import Orphan
from cri.streaming.backend import InputStream, OutputStream, TerminalSize

from .copy import COPY_CHUNK, apply_resizes, copy_in, copy_out, finish_copies
from .terminal import PtyMaster, receive_console

KILL_TIMEOUT = 10.0
EOT = b"\x04"


async def run_with_pipes(argv: list[str], pid_file: Path, stdin: InputStream | None, stdout: OutputStream | None,
                      stderr: OutputStream | None) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL)
    copies = [asyncio.create_task(copy_out(pipe.read, sink))
              for pipe, sink in ((proc.stdout, stdout), (proc.stderr, stderr)) if sink and pipe]
    feeder = asyncio.create_task(_feed_pipe(stdin, proc.stdin)) if stdin and proc.stdin else None
    try:
        await proc.wait()
        await finish_copies(copies)
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


async def run_with_terminal(base: list[str], container_id: str, console_path: Path, pid_file: Path,
                    stdin: InputStream | None, stdout: OutputStream | None,
                    resize: AsyncIterator[TerminalSize] | None) -> int:
    """runc/crun only hand out the console when they detach, so the runtime starts the command and leaves; the
    command is then re-parented to the daemon (a child subreaper), and we wait for it through a pidfd."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(str(console_path))
    listener.listen(1)
    listener.setblocking(False)
    pty: PtyMaster | None = None
    command: Orphan | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        proc = await asyncio.create_subprocess_exec(
            *base, "--detach", "--console-socket", str(console_path), container_id, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            master = await receive_console(listener, proc)
        finally:
            stderr_text = (await proc.stderr.read()).decode(errors="replace").strip() if proc.stderr else ""
            await proc.wait()
        if master is not None:
            pty = PtyMaster(master)
        if proc.returncode:
            raise Internal(f"exec in container {container_id}: {stderr_text}")
        command = _orphan(int(pid_file.read_text().strip()))  # from here on it is ours to reap, whatever happens
        if pty is None:
            raise Internal(f"exec in container {container_id}: the runtime sent no terminal")
        if resize is not None:
            tasks.append(asyncio.create_task(apply_resizes(resize, pty.resize)))
        if stdin is not None:
            tasks.append(asyncio.create_task(copy_in(stdin, pty.write, end=lambda: pty.write(EOT))))
        copies = [asyncio.create_task(copy_out(pty.read, stdout))] if stdout else []
        tasks += copies
        try:
            code = await command.wait()
        except ChildProcessError as e:
            raise Internal("the exec'd process is not the daemon's to reap (not a child subreaper?)") from e
        await finish_copies(copies)
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
