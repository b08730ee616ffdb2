"""An exec'd command apart from its output: its end and its output's end are two events.

A command may end while a background child it started still holds stdout (`sleep 100 & echo hi`). A runtime
that copies the output itself (runc and crun without --detach) waits for that child too, and so would asyncio's
own pipes. So the runtime detaches: the command writes straight into our pipes, is re-parented to the daemon (a
child subreaper) and waited for through a pidfd (`Orphan`), and the pipes are read on until the caller's
deadline; then whoever still holds them is killed: the processes the command left behind, found by the pipe each
one holds open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from cri.oci.reaper import pidfd_ended


class OutputPipes:
    """stdout and stderr pipes whose readers share one byte budget, reading on so a writer never blocks."""

    def __init__(self, budget: int):
        self.budget = budget
        self.stdout, self.stderr = bytearray(), bytearray()
        self._out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self._err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self._inodes = {os.fstat(fd).st_ino for fd in (self._out_r, self._err_r)}
        self._readers: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """Start reading; call once the child holds the write ends (they are closed here)."""
        for fd in (self.out_w, self.err_w):
            os.close(fd)
        self.out_w = self.err_w = -1
        self._readers = asyncio.gather(self._drain(self._out_r, self.stdout), self._drain(self._err_r, self.stderr))

    async def closed(self, timeout: float) -> bool:
        """Whether every writer closed both pipes (the output is complete) within ``timeout`` seconds."""
        assert self._readers is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._readers), max(timeout, 0))
            return True
        except asyncio.TimeoutError:
            return False

    async def kill_holders(self) -> list[int]:
        """SIGKILL every other process that still holds one of the pipes open; return their pids."""
        return await asyncio.to_thread(_kill_holders, self._inodes)

    def close(self) -> None:
        if self._readers is not None:
            self._readers.cancel()
        for fd in (self.out_w, self.err_w):
            if fd >= 0:
                os.close(fd)
        self.out_w = self.err_w = -1
        if self._readers is None:  # never started: the read ends are still ours
            for fd in (self._out_r, self._err_r):
                os.close(fd)

    async def _drain(self, fd: int, into: bytearray) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", buffering=0))
        try:
            while chunk := await reader.read(65536):
                if self.budget > 0:
                    kept = chunk[: self.budget]
                    into += kept
                    self.budget -= len(kept)
        finally:
            transport.close()


def _kill_holders(inodes: set[int]) -> list[int]:
    wanted = {f"pipe:[{ino}]" for ino in inodes}
    me, killed = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue  # gone, or a kernel thread
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
                    break
            except OSError:
                continue
    return killed


class Orphan:
    """A process the runtime left behind for us: waited for and reaped through a pidfd (no pid reuse race)."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)  # OSError when it is gone: a zombie of ours still counts as there
        self.code: int | None = None

    async def wait(self) -> int:
        """Its exit code (128 + the signal that killed it); ChildProcessError when it is not ours to reap."""
        if self.code is None:
            await pidfd_ended(self.fd)
            info = os.waitid(os.P_PIDFD, self.fd, os.WEXITED)
            assert info is not None  # (None only with WNOHANG)
            self.code = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        return self.code

    async def kill_and_reap(self) -> None:
        """Kill it if it still runs, reap it, and let go of it (once)."""
        if self.fd < 0:
            return
        try:
            if self.code is None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.fd, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    await self.wait()
        finally:
            os.close(self.fd)
            self.fd = -1


async def reap_failed_starts(runtime_name: str) -> list[int]:
    """Reap what a runtime's failed detached exec left us: its child that joined the container and died before
    it could exec the command (so it still bears the runtime's name), re-parented to the daemon as a zombie.

    Only zombies that are not the daemon's own runtime calls (asyncio reaps those): they are in another PID
    namespace or cgroup than the daemon, where only a container's process can be.
    """
    reaped = []
    for pid in await asyncio.to_thread(_stray_zombies, runtime_name):
        try:
            orphan = Orphan(pid)
        except OSError:
            continue
        with contextlib.suppress(ChildProcessError):
            await orphan.wait()
            reaped.append(pid)
        await orphan.kill_and_reap()
    return reaped


def _stray_zombies(comm: str) -> list[int]:
    me = os.getpid()
    mine = (_nspid_depth(me), _cgroups(me))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state == "Z" and int(ppid) == me and name == comm[:15]:
            with contextlib.suppress(OSError):
                if (_nspid_depth(int(entry)), _cgroups(int(entry))) != mine:
                    found.append(int(entry))
    return found


def _nspid_depth(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("NSpid:"):
            return len(line.split()) - 1
    return 1


def _cgroups(pid: int) -> str:
    return open(f"/proc/{pid}/cgroup").read()
