"""ContainerManager: the one front the CRI handlers call; each call goes to the part that owns it.

    create.py    CreateContainer (admission, record, bundle, rootfs, spec from specgen.py, conmon in background)
    start.py     StartContainer
    exits.py     exit files and conmon deaths become the record's exit; the runtime delete after an exit
    teardown.py  StopContainer, RemoveContainer, and both for every container of a pod
    recover.py   reconciliation with the runtimes at start, and the orphan sweep
    live.py      ExecSync, UpdateContainerResources, ReopenContainerLog
    checkpoint.py  CheckpointContainer (CRIU, CRI-O's archive layout)
    stats.py     ContainerStats, ListContainerStats, the pod figures of PodSandboxStats
    table.py     what they share: records, names, locks, runtimes, conmon, events

States move as cri/state/container_state.py draws them. Each container has its own lock; no lock is held across
containers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

from cri.config import Config
from cri.core import events as ev
from cri.core.images import ImageService
from cri.core.sandboxes import SandboxManager
from cri.oci import apparmor
from cri.oci.conmon import BundlePaths, Conmon
from cri.oci.runtime import ExecResult, OCIRuntime
from cri.state.container_record import ContainerRecord, ContainerRequest, ResourcesSpec
from cri.state.container_state import LISTED, LIVE
from cri.state.sandbox_record import SandboxRecord

from . import checkpoint as checkpoints, live, start
from .create import Creator
from .exits import Exits
from .recover import Recovery
from .stats import ContainerStats, PodStats, Sampler
from .table import Table
from .teardown import Teardown

# (the method named list shadows the builtin in the class's annotations)
Records = list[ContainerRecord]
Argv = list[str]
StatsList = list[ContainerStats]


class ContainerManager:
    def __init__(self, config: Config, sandboxes: SandboxManager, images: ImageService, bus: ev.EventBus, *,
                 conmon: Conmon | None = None, runtimes: Mapping[str, OCIRuntime] | None = None) -> None:
        """``conmon`` and ``runtimes`` replace the real ones (tests/unit/test_container_manager.py)."""
        self._t = Table(config, bus, conmon=conmon, runtimes=runtimes)
        self._stats = Sampler(images, self._t.cgroups.parent(""))
        self._exits = Exits(self._t, self._stats.forget, images.unmount_rootfs)
        self._creator = Creator(self._t, sandboxes, images, self._exits)
        self._teardown = Teardown(self._t, sandboxes, images, self._creator, self._exits)
        self._recovery = Recovery(self._t, sandboxes, images, self._exits, self._teardown)

    # --- lifetime ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Watch exit files, then take the records back and sweep orphans (recover.py)."""
        self._t.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._exits.start()
        await self._recovery.run()

    async def stop(self) -> None:
        """Containers outlive the daemon: finish the creates, deletes and removals in flight, then stop watching."""
        pending = [*self._creator.pending(), *self._exits.pending(), *self._teardown.pending()]
        if pending:
            await asyncio.wait(pending, timeout=30)
        self._exits.close()

    # --- lifecycle --------------------------------------------------------------------------------------

    async def create(self, request: ContainerRequest) -> ContainerRecord:
        return await self._creator.create(request)

    def mark_abandoned(self, request: ContainerRequest) -> None:
        self._creator.mark_abandoned(request)

    async def start_container(self, ref: str) -> None:
        await start.start_container(self._t, self._creator, self._exits, ref)

    async def stop_container(self, ref: str, timeout: float) -> None:
        await self._teardown.stop_container(ref, timeout)

    async def remove_container(self, ref: str) -> None:
        await self._teardown.remove_container(ref)

    async def stop_all_in_sandbox(self, sandbox_id: str) -> None:
        """The sandbox manager's hook for StopPodSandbox (wired in cri/daemon.py)."""
        await self._teardown.stop_all_in_sandbox(sandbox_id)

    async def remove_all_in_sandbox(self, sandbox_id: str) -> None:
        """The sandbox manager's hook for RemovePodSandbox (wired in cri/daemon.py)."""
        await self._teardown.remove_all_in_sandbox(sandbox_id)

    # --- queries ----------------------------------------------------------------------------------------

    def runtime(self, handler: str) -> OCIRuntime:
        return self._t.runtime(handler)

    @property
    def apparmor_loader(self) -> apparmor.Loader:
        return self._t.apparmor

    def forget_runtime(self, handler: str) -> None:
        """A configuration reload changed the handler (cri/reload.py)."""
        self._t.forget_runtime(handler)

    def get(self, ref: str) -> ContainerRecord:
        return self._t.get(ref)

    def find(self, ref: str) -> ContainerRecord | None:
        return self._t.find(ref)

    def image_in_use(self, image_id: str) -> bool:
        """The image service's check before it removes an image (wired in cri/daemon.py)."""
        return any(r.image_id == image_id for r in self._t.index)

    async def removals_settled(self) -> None:
        """The image service's wait before it removes an image: removed containers' roots pin their layers."""
        await self._teardown.settled()

    def list(self, id_prefix: str = "", state: int | None = None, sandbox_id: str = "",
             labels: dict[str, str] | None = None) -> Records:
        out = []
        for record in self._t.index:
            if record.state not in LISTED:
                continue
            if id_prefix and not record.id.startswith(id_prefix):
                continue
            if state is not None and record.state.cri != state:
                continue
            if sandbox_id and not record.sandbox_id.startswith(sandbox_id):
                continue
            if labels and any(record.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(record)
        return out

    def verbose_info(self, record: ContainerRecord) -> dict[str, str]:
        info = {
            "sandboxID": record.sandbox_id, "pid": record.pid, "conmonPid": record.conmon_pid,
            "runtimeHandler": record.runtime_handler, "apparmorProfile": record.apparmor_profile,
            "bundle": record.bundle, "rootfs": record.rootfs,
            "cgroupsPath": record.cgroups_path, "request": record.request,
        }
        try:
            info["runtimeSpec"] = json.loads(BundlePaths(Path(record.bundle)).config.read_text())
        except (OSError, ValueError):
            pass
        return {"info": json.dumps(info)}

    # --- exec, update, logs, stats ----------------------------------------------------------------------

    async def exec_sync(self, ref: str, argv: Argv, timeout: float) -> ExecResult:
        return await live.exec_sync(self._t, ref, argv, timeout)

    async def update_resources(self, ref: str, resources: ResourcesSpec) -> None:
        await live.update_resources(self._t, self._creator, ref, resources)

    async def reopen_log(self, ref: str) -> None:
        await live.reopen_log(self._t, ref)

    async def checkpoint(self, ref: str, location: str, timeout: float) -> None:
        await checkpoints.checkpoint(self._t, ref, location, timeout)

    async def stats(self, ref: str) -> ContainerStats:
        return await self._stats.container(self._t.get(ref))

    async def list_stats(self, id_prefix: str = "", sandbox_id: str = "",
                         labels: dict[str, str] | None = None) -> StatsList:
        records = [r for r in self.list(id_prefix, None, sandbox_id, labels) if r.state in LIVE]
        return [*await asyncio.gather(*(self._stats.container(r) for r in records))]

    async def sandbox_stats(self, sandbox: SandboxRecord) -> PodStats:
        live_records = [r for r in self.list(sandbox_id=sandbox.id) if r.state in LIVE]
        return await self._stats.pod(sandbox, live_records)
