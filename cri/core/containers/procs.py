"""Small process and file facts the container parts share: is a pid still this container's conmon, kill it,
read a pid file, when a file changed, and a background task whose failure is logged."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from cri.errors import InvalidArgument
from cri.oci import signals
from cri.oci.reaper import pidfd_ended

log = logging.getLogger(__name__)


def is_monitor_of(pid: int, container_id: str) -> bool:
    """The pid still belongs to this container's conmon (not to a process that reused the number)."""
    try:
        return container_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


async def monitor_gone(pid: int, container_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_monitor_of(pid, container_id):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def execd(pid: int, timeout: float) -> None:
    """Wait (at most `timeout` seconds) until the container's init has exec'd its process. runc's init names itself
    runc:[2:INIT] and, a Go program, catches every signal: a stop signal it gets before the exec is lost (SIGUSR1,
    SIGWINCH, a real-time one; on a loaded host the exec can lag StartContainer's answer)."""
    deadline = time.monotonic() + timeout
    while _comm(pid).startswith("runc:[") and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read()
    except OSError:
        return ""


async def exited(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited (a zombie has): a signal is only sent when kill() returns, and a loaded host may
    not run the process's death for a while. False if it still runs after `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, ValueError):
        return True
    try:
        return await pidfd_ended(fd, timeout)
    finally:
        os.close(fd)


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def mtime_ns(path: Path) -> int:
    """When a file last changed (an exit file: the exit; a runtime state dir: the start); now if it is gone."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return time.time_ns()


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def background(work: Awaitable[Any], what: str) -> asyncio.Future[Any]:
    """A task whose failure is logged even if nobody ever awaits it (whoever does still gets the exception)."""
    task = asyncio.ensure_future(work)

    def report(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.warning("%s failed: %s", what, done.exception())

    task.add_done_callback(report)
    return task


def signal_number(name: str) -> int:
    """The stop signal's number (see cri.oci.signals); InvalidArgument when unknown."""
    try:
        return signals.signal_number(name)
    except ValueError as e:
        raise InvalidArgument(f"stop signal: {e}") from None


def exit_reason(exit_code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"
