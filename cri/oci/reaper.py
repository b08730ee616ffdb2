"""Reaping for a daemon that is a child subreaper (cri.daemon makes it one): detached conmons are re-parented
to the daemon, and this reaps them.

This host's PID 1 does not reap orphans, so without this every exited conmon would stay a zombie. asyncio
already waits for the children it spawned, so we never call waitpid(-1): we reap only pids handed to ``watch``
(conmon's, from its pid file), through a pidfd, which cannot race with asyncio's own child watcher.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


class Reaper:
    def __init__(self, on_exit: Callable[[int], None] = lambda pid: None) -> None:
        self._fds: dict[int, int] = {}
        self._on_exit_callback = on_exit

    def watch(self, pid: int) -> None:
        """Reap ``pid`` when it exits if it is (or becomes) our child, then tell ``on_exit``; a pid that is not
        our child is only reported."""
        if pid <= 0 or pid in self._fds:
            return
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return
        self._fds[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, pid)

    def _on_exit(self, pid: int) -> None:
        fd = self._fds.pop(pid)
        asyncio.get_running_loop().remove_reader(fd)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by an earlier daemon): its parent reaps it
        finally:
            os.close(fd)
        self._on_exit_callback(pid)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._fds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()


async def pidfd_ended(pidfd: int, timeout: float | None = None) -> bool:
    """Whether the process behind ``pidfd`` ended within ``timeout`` seconds (None: wait for it): a pidfd becomes
    readable when its process exits. The loop may call the reader again before it is removed, hence the check."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, resolve)
    try:
        await asyncio.wait_for(ended, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
