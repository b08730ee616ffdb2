"""StopContainer and RemoveContainer, and the same for every container of a pod being stopped or removed.

A stop sends the stop signal, waits, then SIGKILLs, and returns once the runtime's delete started at the exit is
done. A remove makes sure of that delete (the container's processes are gone), deletes the record (the commit
point: the container is gone for every caller) and reclaims the rest in the background: the root filesystem,
conmon and its cgroup, the bundle. A crash meanwhile leaves files without a record, which the start-up sweep
removes (recover.py); a failed reclaim is retried, and reported, by the pod's removal, which waits for its
containers' reclaims. `destroy` undoes a record a crash left half-created; there the record goes last, so that
it names what is left to remove.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import Awaitable
import time

from cri.core import events as ev
from cri.core.images import ImageService
from cri.core.sandboxes import SandboxManager, host as sandbox_host
from cri.errors import FailedPrecondition, Internal
from cri.faults import crash_point
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from hostos import cgroups

from .create import Creator
from .exits import Exits
from .procs import background, execd, kill, monitor_gone, signal_number
from .table import Table

log = logging.getLogger(__name__)

KILL_WAIT = 10.0  # after SIGKILL, how long conmon may take to report the exit
MONITOR_EXIT_WAIT = 2.0  # after the container's exit, how long conmon may take to drain its output and leave


class Teardown:
    def __init__(self, table: Table, sandboxes: SandboxManager, images: ImageService, creator: Creator,
                 exits: Exits) -> None:
        self._t = table
        self._sandboxes = sandboxes
        self._images = images
        self._creator = creator
        self._exits = exits
        # container id -> (its pod, its removal's background reclaim); a failed one stays until its pod retries it
        self._reclaims: dict[str, tuple[ContainerRecord, asyncio.Future[None]]] = {}

    async def stop_container(self, ref: str, timeout: float) -> None:
        """Stop signal, then SIGKILL after ``timeout`` seconds; idempotent, and an unknown id is not an error.

        Returns once the runtime's delete started at the exit is done too (as containerd's stop waits for its task
        delete): the container's cgroup and mount are gone, and a RemoveContainer that follows finds little to do.
        """
        record = self._t.find(ref)
        if record is None:
            return
        async with self._t.lock(record.id):
            await self._stop_locked(record, timeout)
        await self._exits.settled(record)

    async def _stop_locked(self, record: ContainerRecord, timeout: float) -> None:
        try:
            await self._creator.spawned(record)
        except FailedPrecondition:
            pass  # it never ran: nothing to stop
        if not record.state.live:
            return
        if record.restore_from and record.state == ContainerState.CREATED:  # no process until its restore
            self._exits.record_exit(record, 0, "", time.time_ns(), "stopped before its process was restored")
            return
        runtime = self._t.runtime(record.runtime_handler)
        if timeout > 0:
            deadline = time.monotonic() + timeout
            if record.pid > 0:
                await execd(record.pid, timeout)  # (the grace period counts from here all the same)
            try:
                await runtime.kill(record.id, signal_number(record.stop_signal))
            except OCIRuntimeError as e:
                log.debug("stop signal to %s: %s", record.id, e)
            crash_point("container.stop.after_signal")
            if await self._exits.wait_exit(record, max(0.0, deadline - time.monotonic())):
                return
        try:
            await runtime.kill(record.id, signal.SIGKILL, all_processes=True)
        except OCIRuntimeError as e:
            log.debug("SIGKILL to %s: %s", record.id, e)
        if not await self._exits.wait_exit(record, KILL_WAIT):
            raise Internal(f"container {record.id} did not exit {KILL_WAIT}s after SIGKILL")

    async def remove_container(self, ref: str) -> None:
        """Kill if running, then delete everything of the container; an unknown id is not an error."""
        t = self._t
        record = t.find(ref)
        if record is None:
            return
        async with t.lock(record.id):
            if record.id not in t.index:
                return
            await self._stop_locked(record, 0)
            try:  # started at the exit (StopContainer waited for it): its processes must be gone
                await self._exits.runtime_deleted(record)
            except Internal:
                raise
            except Exception as e:
                raise Internal(f"removing container {record.id}: {e}") from e
            await asyncio.wrap_future(t.store.delete(record.id))
            crash_point("container.remove.after_record")
            t.index.remove(record.id)
            t.names.release(record.reserved_name, record.id)
            self._reclaims[record.id] = (record, background(self._reclaim(record), f"reclaiming {record.id}"))
        t.forget_lock(record.id)
        t.publish(record, ev.DELETED)

    async def _reclaim(self, record: ContainerRecord) -> None:
        await self._release(record)
        self._reclaims.pop(record.id, None)  # kept on failure, for the pod's removal to retry and report

    def pending(self) -> list[asyncio.Future[None]]:
        return [future for _, future in self._reclaims.values() if not future.done()]

    async def settled(self) -> None:
        """Every reclaim in flight has ended (a failed one too)."""
        pending = self.pending()
        if pending:
            await asyncio.wait(pending)

    async def reclaimed(self, sandbox_id: str) -> None:
        """Wait for the reclaims of the pod's removed containers; retry a failed one (Internal if it fails again)."""
        mine = [(record, future) for record, future in self._reclaims.values() if record.sandbox_id == sandbox_id]
        if mine:
            await asyncio.wait([future for _, future in mine])
        for record, future in mine:
            if future.exception() is not None:
                await self._release(record)
                self._reclaims.pop(record.id, None)

    async def stop_all_in_sandbox(self, sandbox_id: str) -> None:
        await self._creator.close(sandbox_id)
        records = [r for r in self._t.index if r.sandbox_id == sandbox_id]
        await asyncio.gather(*(self.stop_container(r.id, 0) for r in records))

    async def remove_all_in_sandbox(self, sandbox_id: str) -> None:
        await self._creator.close(sandbox_id)
        records = [r for r in self._t.index if r.sandbox_id == sandbox_id]
        await asyncio.gather(*(self.remove_container(r.id) for r in records))
        await self.reclaimed(sandbox_id)

    async def destroy(self, record: ContainerRecord) -> None:
        """Undo everything a container may have (a record a crash left half-created, at start).

        The rootfs is mounted in the host's namespace, so runc's delete, the unmount and conmon's leaving are
        independent. The bundle goes last: the start-up sweep finds what is left of a removed container by it.
        """
        await self._release(record, self._exits.runtime_deleted(record))

    async def _release(self, record: ContainerRecord, *also: Awaitable[None]) -> None:
        """The root, conmon and its cgroup, the bundle, the exit file and the record (with `also`, concurrently)."""
        results = await asyncio.gather(*also, self._remove_rootfs(record), self._retire_monitor(record),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise Internal(f"removing container {record.id}: {errors[0]}") from errors[0]
        crash_point("container.remove.after_runtime")
        await asyncio.to_thread(self._delete_files, record)

    def _delete_files(self, record: ContainerRecord) -> None:
        """In a worker thread: on a busy disk these unlinks took milliseconds of the event loop. The bundle is
        renamed aside (one rename, where a pod's removal may be waiting for this) and deleted after; a crash
        leaves the moved one to the start-up sweep."""
        if record.bundle and os.path.lexists(record.bundle):
            doomed = self._t.removed_bundle(record.id)
            shutil.rmtree(doomed, ignore_errors=True)  # an earlier removal of the same id that a crash interrupted
            os.rename(record.bundle, doomed)
            self._t.discard(doomed)
        self._t.conmon.exit_file(record.id).unlink(missing_ok=True)
        self._t.store.delete(record.id).result()

    async def _remove_rootfs(self, record: ContainerRecord) -> None:
        sandbox = self._sandboxes.find(record.sandbox_id)
        if sandbox is not None and sandbox.userns_path:  # (a removed sandbox took the bind with it)
            await asyncio.to_thread(sandbox_host.unexpose_rootfs, sandbox.sandbox_dir, record.id)
        await self._images.remove_rootfs(record.id)

    async def _retire_monitor(self, record: ContainerRecord) -> None:
        """conmon leaves once the container's output is drained; give it a moment, then remove its cgroup."""
        pid = record.conmon_pid
        if pid and not await monitor_gone(pid, record.id, MONITOR_EXIT_WAIT):
            log.warning("container %s: conmon (pid %d) outlived its container; killing it", record.id, pid)
            kill(pid)
            if not await monitor_gone(pid, record.id, KILL_WAIT):
                raise Internal(f"conmon (pid {pid}) did not exit {KILL_WAIT}s after SIGKILL")
        if record.conmon_cgroup:
            await self._t.cgroups.release(record.conmon_cgroup)  # systemd: its scope; cgroupfs: nothing
            failed = await asyncio.to_thread(cgroups.remove, record.conmon_cgroup)
            if failed:
                raise Internal(f"conmon's cgroups not removed: {failed}")
