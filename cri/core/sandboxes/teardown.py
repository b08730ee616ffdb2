"""StopPodSandbox and RemovePodSandbox, and the undo of everything a sandbox may have, which reconciliation at
start uses for a sandbox a crash left half-created. Both are idempotent."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from cri.core import events as ev
from cri.core.undo import named_error
from cri.faults import crash_point
from cri.observe import trace
from cri.state.sandbox_record import SandboxRecord
from .table import Table


class Teardown:
    def __init__(self, t: Table) -> None:
        self._t = t

    async def stop_pod(self, ref: str) -> None:
        """Stop the pod's containers, tear its network down and kill the infra; the record stays. Idempotent."""
        record = self._t.index.find(ref)
        if record is None:
            return
        async with self._t.lock(record.id):
            if record.id in self._t.index:  # not removed while we waited for the lock
                await self._stop_locked(record)

    async def _stop_locked(self, record: SandboxRecord) -> None:
        if self._t.stop_containers is not None and record.state != "creating":
            await self._t.stop_containers(record.id)
        work = []
        if record.network_ready and self._t.cni is not None:
            work.append(self._teardown_network(record))
        if record.infra_parent_pid:
            work.append(self._stop_infra(record))
        errors = [r for r in await asyncio.gather(*work, return_exceptions=True) if isinstance(r, BaseException)]
        crash_point("sandbox.stop.after_network")
        was_ready = record.state == "ready"
        record.state = "notready"
        self._t.store.save(record, durable=False)
        if was_ready:
            self._t.publish(record, ev.STOPPED)
        if errors:
            raise errors[0]

    async def _teardown_network(self, record: SandboxRecord) -> None:
        assert self._t.cni is not None  # (network_ready is set only with one)
        try:
            with trace.phase("cni_del", pod_sandbox_id=record.id):  # not part of the start timeline
                await self._t.cni.teardown(self._t.pod_network(record))
        except Exception as e:
            raise named_error("tearing down the pod network (CNI DEL)", e) from e
        record.network_ready = False

    async def _stop_infra(self, record: SandboxRecord) -> None:
        await self._t.host.stop_infra(record.infra_pid, record.infra_start_time, record.infra_parent_pid)
        record.infra_pid = record.infra_start_time = record.infra_parent_pid = 0

    async def remove_pod(self, ref: str) -> None:
        """Stop if needed, then remove namespaces, mounts, cgroup, files, record and name. Idempotent."""
        record = self._t.index.find(ref)
        if record is None:
            return
        lock = self._t.lock(record.id)
        async with lock:
            if record.id not in self._t.index:
                return  # removed while we waited for the lock
            if self._t.remove_containers is not None:
                await self._t.remove_containers(record.id)
            await self.destroy(record)
            self._t.index.remove(record.id)
            self._t.names.release(record.reserved_name, record.id)
            self._t.publish(record, ev.DELETED)
        self._t.forget_lock(record.id)

    async def destroy(self, record: SandboxRecord) -> None:
        """Undo everything a sandbox may have: used by Remove and by reconciliation of a half-created one."""
        half_created = record.state == "creating"
        if half_created and self._t.cni is not None and record.netns_path:
            record.network_ready = True  # an ADD may have run before the crash: DEL is idempotent
        if record.network_ready or record.infra_parent_pid or record.state != "notready":
            await self._stop_locked(record)
        host = self._t.host
        # In worker threads: the unmounts, and the parse of the mount table (hundreds of lines when 50 pods run),
        # took the event loop's time from every other call while a node's pods went away together.
        await asyncio.to_thread(self._unpin, record)
        crash_point("sandbox.remove.after_namespaces")
        await asyncio.to_thread(self._unmount_rootfs_binds, record)
        if half_created:
            # A crash can leave the infra in its own cgroup before the record knew its pid, possibly not yet
            # exec'd: a PID namespace's init ignores SIGTERM, so systemd's stop of its scope would wait out
            # TimeoutStopSec (the node VM's undo failed on it). Whatever is in it is ours to kill, first.
            host.kill_cgroups(host.cgroup_dirs(record.cgroup_path))
        # systemd: stopping the infra's scope kills what is left in it and removes it, before any rmdir
        await self._t.cgroups.release(record.cgroup_path)
        if record.cgroups_created:
            await host.remove_cgroups(record.cgroups_created)
        elif half_created:  # the crash may have come before the record learned which cgroups it made
            # the sandbox's own cgroup dir in every hierarchy (its parents may be shared, so they are left)
            await host.remove_cgroups(host.cgroup_dirs(record.cgroup_path))
        await asyncio.to_thread(self._delete_files, record)

    def _unpin(self, record: SandboxRecord) -> None:
        host = self._t.host
        if not record.namespace_options.host_ipc and record.shm_path:
            host.unmount(record.shm_path)
        for path in (record.netns_path, record.ipc_path, record.uts_path, record.userns_path):
            if path:
                host.unpin_namespace(path)

    def _unmount_rootfs_binds(self, record: SandboxRecord) -> None:
        """The containers' rootfs binds (user-namespaced pods); where the directory they go under was never made,
        nothing can be mounted below it, and the mount table is not read."""
        rootfs = Path(record.sandbox_dir) / "rootfs"
        if not rootfs.exists():
            return
        for target in self._t.host.mounts_below(rootfs):
            self._t.host.unmount(target)

    def _delete_files(self, record: SandboxRecord) -> None:
        """In a worker thread: on a busy disk these unlinks took milliseconds of the event loop."""
        shutil.rmtree(record.sandbox_dir, ignore_errors=True)
        self._t.store.delete(record.id).result()
