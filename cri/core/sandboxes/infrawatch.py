"""Whether each pod's infra process still runs, known from memory: a pidfd per infra, read by the event loop.

ListPodSandbox and PodSandboxStatus tell a pod whose infra died as NotReady. Reading /proc/<pid>/stat of every
ready pod on every call was most of ListPodSandbox's own work under a wave of pod starts (py-spy); a pidfd becomes
readable once its process exits (a zombie included), so the loop learns of the death once and the calls only look
it up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

Key = tuple[int, int]  # (pid, start time): with the start time a pid names one process for good


class InfraWatch:
    def __init__(self, running_now: Callable[[int, int], bool]) -> None:
        """``running_now(pid, start_time)`` reads the process table: used once per infra, when its watch begins
        (the pid may already name a dead or another process), and where no pidfd can be had."""
        self._running_now = running_now
        self._fds: dict[Key, int] = {}
        self._ended: set[Key] = set()

    def running(self, pid: int, start_time: int) -> bool:
        key = (pid, start_time)
        if key in self._fds:
            return True
        if key in self._ended:
            return False
        return self._watch(key)

    def _watch(self, key: Key) -> bool:
        pid, start_time = key
        try:
            loop = asyncio.get_running_loop()
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._ended.add(key)
            return False
        except (RuntimeError, OSError):  # no loop here, or no pidfds (a kernel before 5.3)
            return self._running_now(pid, start_time)
        if not self._running_now(pid, start_time):  # checked after the open: the pidfd then names this process
            os.close(fd)
            self._ended.add(key)
            return False
        self._fds[key] = fd
        loop.add_reader(fd, self._exited, key)
        return True

    def _exited(self, key: Key) -> None:
        fd = self._fds.pop(key, None)
        if fd is None:
            return
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self._ended.add(key)

    def forget(self, pid: int, start_time: int) -> None:
        """The infra was stopped: its watch (or the memory of its end) goes."""
        key = (pid, start_time)
        self._ended.discard(key)
        fd = self._fds.pop(key, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid, start_time in list(self._fds):
            self.forget(pid, start_time)
        self._ended.clear()
