"""Exits: conmon's exit files (through an inotify watcher) and conmon's own death (through the reaper) become
the record's exit; and the runtime delete that follows every exit.

Exits are applied without the container's lock, in one synchronous update on the event loop, so a stop that
holds the lock while it waits for an exit cannot deadlock with it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cri.core import events as ev
from cri.errors import Internal
from cri.oci.conmon import BundlePaths
from cri.oci.exitwatch import ExitWatcher, read_exit_status
from cri.oci.reaper import Reaper
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from hostos import cgroups
from hostos.atomicfile import atomic_write_bytes
from hostos.cgroups.oomwatch import OomWatch

from .procs import background, exit_reason, exited, is_alive, mtime_ns
from .table import Table

log = logging.getLogger(__name__)

# How long a container killed because its monitor died may take to die before its exit is recorded anyway.
KILL_WAIT = 10.0


class Exits:
    def __init__(self, table: Table, forget_sample: Callable[[str], None],
                 unmount_rootfs: Callable[[str], Awaitable[None]]) -> None:
        self._t = table
        self._unmount_rootfs = unmount_rootfs
        self._forget_sample = forget_sample  # the stats' CPU sample of an exited container
        self._watcher = ExitWatcher(table.exit_dir, self._on_exit_file)
        self._reaper = Reaper(self._on_monitor_exit)
        self._oom = OomWatch()
        self._monitors: dict[int, str] = {}  # conmon pid -> container id
        self._exited: dict[str, asyncio.Event] = {}  # waiters for an exit, by container id
        self._deleting: dict[str, asyncio.Future[Any]] = {}  # the runtime delete started at exit
        # `runtime start` in flight: an exit applied meanwhile marks the start first
        self.starting: set[str] = set()

    def start(self) -> None:
        self._watcher.start()
        self._oom.start()

    def pending(self) -> list[asyncio.Future[Any]]:
        return list(self._deleting.values())

    def close(self) -> None:
        self._watcher.stop()
        self._reaper.close()
        self._oom.close()

    def mark_running(self, record: ContainerRecord) -> None:
        record.move(ContainerState.RUNNING)
        record.started_at = time.time_ns()
        self._t.save(record)
        self._t.publish(record, ev.STARTED)

    def watch_monitor(self, record: ContainerRecord) -> None:
        self._monitors[record.conmon_pid] = record.id
        self._reaper.watch(record.conmon_pid)
        self._oom.watch(record.id, record.cgroups_path)

    def _on_monitor_exit(self, pid: int) -> None:
        """conmon writes the exit file before it exits; if there is none, it died on its own."""
        record = self._t.index.find(self._monitors.pop(pid, ""))
        if record is None or not record.state.live:
            return
        if self._t.conmon.exit_file(record.id).exists():
            self.apply_exit(record)
        else:
            background(self.monitor_lost(record), f"handling the lost monitor of {record.id}")

    async def monitor_lost(self, record: ContainerRecord) -> None:
        """Without conmon nobody collects the container's output or exit: kill it and say why."""
        log.error("container %s: its monitor (conmon pid %d) died; killing the container", record.id,
                  record.conmon_pid)
        if is_alive(record.pid):
            # conmon was its parent; as the subreaper we inherit it and must reap it, or the pod's pid
            # namespace cannot end.
            self._reaper.watch(record.pid)
        try:
            await self._t.runtime(record.runtime_handler).kill(record.id, signal.SIGKILL, all_processes=True)
        except OCIRuntimeError as e:
            log.debug("SIGKILL to %s: %s", record.id, e)
        if record.pid > 0 and not await exited(record.pid, KILL_WAIT):  # reported exited only once it is
            log.warning("container %s: pid %d still runs %gs after SIGKILL", record.id, record.pid, KILL_WAIT)
        if not record.state.live or self._t.conmon.exit_file(record.id).exists():
            return
        record.message = f"the container's monitor (conmon pid {record.conmon_pid}) died; the container was killed"
        exit_file = self._t.conmon.exit_file(record.id)
        atomic_write_bytes(exit_file, b"137", durable=False)
        self.apply_exit(record)

    def _on_exit_file(self, container_id: str) -> None:
        record = self._t.index.find(container_id) if len(container_id) == 64 else None
        if record is not None and record.state.live:
            self.apply_exit(record)

    def apply_exit(self, record: ContainerRecord) -> None:
        """Record an exit conmon reported; synchronous, so it needs no lock."""
        exit_file = self._t.conmon.exit_file(record.id)
        code = read_exit_status(exit_file)
        if code is None:
            return
        # conmon's oom file, or the kernel's own count (v2 memory.events, v1 memory.oom_control) of the cgroup
        # (and what the OOM watch read before a systemd scope went with its counter)
        oom = (BundlePaths(Path(record.bundle)).oom_file.exists() or self._oom.killed(record.id)
               or cgroups.oom_kills(record.cgroups_path) > 0)
        self.record_exit(record, code, exit_reason(code, oom), mtime_ns(exit_file))

    def record_exit(self, record: ContainerRecord, code: int, reason: str, finished: int, message: str = "") -> None:
        if record.id in self.starting and record.state == ContainerState.CREATED:
            self.mark_running(record)  # it exited before `runtime start` returned: started, then stopped
        if record.started_at == 0 or record.started_at > finished:  # our start stamp came after its exit
            record.started_at = finished
        record.move(ContainerState.EXITED)
        record.finished_at = finished
        record.exit_code = code
        record.reason = reason
        if message:
            record.message = message
        self._t.save(record)
        self._forget_sample(record.id)
        self._oom.forget(record.id)
        # runc's delete of a stopped container takes ~15 ms (it waits for the cgroup to empty), and unmounting
        # its overlay root syncs the upper layer: do both now, in the background, so RemoveContainer does not pay
        # for them and the cgroup and the mount are freed at once (containerd unmounts at exit too).
        self._deleting[record.id] = background(self._delete_runtime(record), f"deleting {record.id} after its exit")
        waiter = self._exited.pop(record.id, None)
        if waiter is not None:
            waiter.set()
        self._t.publish(record, ev.STOPPED)

    async def wait_exit(self, record: ContainerRecord, timeout: float) -> bool:
        if not record.state.live:
            return True
        waiter = self._exited.setdefault(record.id, asyncio.Event())
        if self._t.conmon.exit_file(record.id).exists():  # written before we started waiting
            self.apply_exit(record)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return record.state == ContainerState.EXITED
        return True

    async def settled(self, record: ContainerRecord) -> None:
        """Wait for the delete started at the exit, if one runs; its failure is left to `runtime_deleted`."""
        pending = self._deleting.get(record.id)
        if pending is not None:
            await asyncio.wait([pending])

    async def runtime_deleted(self, record: ContainerRecord) -> None:
        """Wait for the delete started at exit, or delete now if none ran or it failed."""
        pending = self._deleting.pop(record.id, None)
        if pending is not None:
            try:
                await pending
                return
            except Exception as e:
                log.warning("container %s: delete after exit failed (%s); retrying", record.id, e)
        await self._delete_runtime(record)

    async def _delete_runtime(self, record: ContainerRecord) -> None:
        if record.state == ContainerState.EXITED:
            await asyncio.to_thread(cgroups.kill_all, record.cgroups_path)
        await self._t.runtime(record.runtime_handler).delete(record.id, force=True)
        # runc and crun leave the container's cgroup parents (and on v1 sometimes the cgroup) behind. A process
        # they killed may still be in it (a loaded host had not run its exit yet; runc then deletes its state
        # anyway, so a retried delete finds nothing): the container is not gone until it has left.
        failed = await asyncio.to_thread(cgroups.remove, record.cgroups_path)
        if failed and not await asyncio.to_thread(cgroups.kill_all, record.cgroups_path, KILL_WAIT / 2):
            pids = sorted({pid for d in failed for pid in cgroups.procs(d)})
            raise Internal(f"container {record.id}: processes {pids} still in its cgroup {failed[0]} "
                           f"{KILL_WAIT / 2:g}s after SIGKILL (stuck in the kernel, or in a frozen cgroup?)")
        if failed:
            failed = await asyncio.to_thread(cgroups.remove, record.cgroups_path)
        if failed:
            log.warning("container %s: cgroups not removed: %s", record.id, failed)
        if record.state == ContainerState.EXITED:  # no process of it is left to use the root
            try:
                await self._unmount_rootfs(record.id)
            except Exception as e:  # RemoveContainer unmounts again, and reports a failure then
                log.warning("container %s: unmounting its root after its exit: %s", record.id, e)
