"""The infra processes' liveness from memory (cri/core/sandboxes/infrawatch.py): the process table is read once
per infra, its death (a zombie included) is learnt from its pidfd, and a stop forgets it without leaking the fd."""

import asyncio
import os
import subprocess

from cri.core.sandboxes.host import infra_running, process_start_time
from cri.core.sandboxes.infrawatch import InfraWatch


class Counting:
    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, pid: int, start_time: int) -> bool:
        self.reads += 1
        return infra_running(pid, start_time)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _until(predicate, wait: float = 5.0) -> bool:
    for _ in range(int(wait / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def test_a_death_is_learnt_once_and_calls_read_memory_only():
    async def scenario() -> None:
        reads = Counting()
        watch = InfraWatch(reads)
        proc = subprocess.Popen(["sleep", "600"])
        try:
            start = process_start_time(proc.pid)
            assert all(watch.running(proc.pid, start) for _ in range(100))
            assert reads.reads == 1
            proc.kill()  # not reaped: a zombie holds nothing, and counts as dead
            assert await _until(lambda: not watch.running(proc.pid, start))
            assert not watch.running(proc.pid, start) and reads.reads == 1
        finally:
            proc.kill()
            proc.wait()
        watch.close()

    asyncio.run(scenario())


def test_a_reused_pid_or_a_gone_process_is_not_running():
    async def scenario() -> None:
        watch = InfraWatch(infra_running)
        proc = subprocess.Popen(["sleep", "600"])
        try:
            start = process_start_time(proc.pid)
            assert not watch.running(proc.pid, start + 1)  # same pid, another process
            assert watch.running(proc.pid, start)
        finally:
            proc.kill()
            proc.wait()
        assert not watch.running(proc.pid, start + 2)  # gone (ESRCH at the open)
        watch.close()

    asyncio.run(scenario())


def test_forget_and_close_release_the_pidfds():
    async def scenario() -> None:
        watch = InfraWatch(infra_running)
        before = _fds()
        procs = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
        try:
            starts = [process_start_time(p.pid) for p in procs]
            assert all(watch.running(p.pid, s) for p, s in zip(procs, starts, strict=True))
            assert _fds() == before + 3
            watch.forget(procs[0].pid, starts[0])
            assert _fds() == before + 2
            watch.close()
            assert _fds() == before
        finally:
            for p in procs:
                p.kill()
                p.wait()

    asyncio.run(scenario())


def test_without_a_loop_it_reads_the_process_table():
    reads = Counting()
    watch = InfraWatch(reads)
    pid, start = os.getpid(), process_start_time(os.getpid())
    assert watch.running(pid, start) and watch.running(pid, start)
    assert reads.reads == 2
