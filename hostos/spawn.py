"""Child processes started and waited for in threads, never on the event loop.

asyncio's subprocess support forks on the loop's thread, and under vfork that thread waits for the child's exec:
in a 50-pod wave conmon's and the CNI plugins' spawns were the largest share of the loop's busy time left
(py-spy). ``subprocess.Popen`` in a worker thread starts the same child with the same options (a new session,
fds passed on, a working directory) while the loop answers other calls.

A caller cancelled while its child runs still gets the child killed and reaped before the cancellation goes on,
as with asyncio's own processes: nothing is left running behind a call that gave up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

# Threads that start children and wait for them: as many as a wave of pod starts runs at once (a CNI chain and an
# infra per pod); each waits, it does not compute.
_POOL_SIZE = 32
_POOL = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="spawn")
# conmon's own threads: a CNI plugin holds its thread for its whole run (host-local's lock serializes a wave's
# ADDs), and a container's start, which waits for its conmon, queued behind them when the two shared one pool.
# conmon's first process exits right after its fork, so a few threads serve a whole wave of creates.
MONITORS_SIZE = 8
MONITORS = ThreadPoolExecutor(MONITORS_SIZE, thread_name_prefix="spawn-conmon")

# After a kill, how long the pipes may stay open (held by something that left the process group) before they
# are closed on it and what it wrote is dropped.
_DRAIN = 2.0


@dataclass(frozen=True)
class Output:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def prestart(pool: ThreadPoolExecutor = _POOL, size: int = _POOL_SIZE) -> None:
    """Start the ``size`` threads of ``pool`` (this module's by default) now, at the daemon's start. A pool starts
    its threads on demand, from the submitting thread: the event loop then waits in Thread.start for each new
    thread to run, which took 100 ms and more on this loaded 2-core host while 50 pods started at once."""
    ready = threading.Barrier(size)
    for _ in range(size):  # each waits until all are running: the pool cannot hand two of them to one thread
        pool.submit(ready.wait, 10)


async def popen(argv: Sequence[str], pool: ThreadPoolExecutor = _POOL, **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **options)`` in a thread of ``pool`` (this module's by default, MONITORS for
    conmon); OSError as Popen raises it. Each call below takes the pool its child was started from."""
    future = asyncio.get_running_loop().run_in_executor(pool, partial(_start, list(argv), options))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        try:
            proc = await future  # the spawn goes on in its thread: what it starts is ours to end
        except Exception:
            raise asyncio.CancelledError() from None
        kill(proc, group=bool(options.get("start_new_session")))
        await asyncio.get_running_loop().run_in_executor(pool, _drain, proc)
        raise


async def communicate(proc: subprocess.Popen[bytes], stdin: bytes | None = None, timeout: float | None = None,
                      group: bool = False, pool: ThreadPoolExecutor = _POOL) -> Output:
    """Feed ``stdin``, then collect the output until the process ends. After ``timeout`` seconds the process (with
    ``group``, its whole process group: what it started too) is killed and reaped, and the result says timed out
    with what it wrote by then. A cancelled caller's process is killed the same way before CancelledError goes on."""
    future = asyncio.get_running_loop().run_in_executor(pool, _communicate, proc, stdin, timeout, group)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        kill(proc, group)
        try:
            await future
        except Exception:
            pass
        raise


async def wait(proc: subprocess.Popen[bytes], pool: ThreadPoolExecutor = _POOL) -> int:
    """Its exit status once it ended (reaped), without holding the loop."""
    return await asyncio.get_running_loop().run_in_executor(pool, proc.wait)


def kill(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGKILL the process (with ``group``, its process group, whose id is its pid when it started a session) if it
    has not been reaped yet; a process group outlives its leader while members remain, so its id stays theirs."""
    if proc.returncode is not None and not group:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass  # gone already (EPERM: a group whose last member is a zombie)


def _start(argv: list[str], options: dict[str, Any]) -> subprocess.Popen[bytes]:
    proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **options)
    return proc


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float | None, group: bool) -> Output:
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, group)
        out, err = _drain(proc)
        return Output(proc.returncode, out or b"", err or b"", timed_out=True)
    return Output(proc.returncode, out or b"", err or b"")


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Reap a killed process and take what is left in its pipes (communicate keeps what it read before)."""
    try:
        out, err = proc.communicate(timeout=_DRAIN)
    except subprocess.TimeoutExpired:  # a child that escaped the kill holds them: stop reading
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        return b"", b""
    return out or b"", err or b""
