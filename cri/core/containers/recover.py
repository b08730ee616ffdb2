"""Start-up: take the records back and make them tell the truth the runtimes and conmon know after the daemon's
absence (reconciliation), then remove what a crash left with no record at all (the orphan sweep)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cri.core.images import ImageService
from cri.core.sandboxes import SandboxManager, host as sandbox_host
from cri.core.undo import restore_or_undo
from cri.errors import CRIError
from cri.oci.conmon import BundlePaths
from cri.oci.exitwatch import read_exit_status
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from cri.state.ids import valid_id
from hostos import cgroups

from .exits import Exits
from .restore import RESTORE_UNPACK_PREFIX
from .procs import background, is_monitor_of, kill, monitor_gone, mtime_ns, read_pid
from .table import Table
from .teardown import KILL_WAIT, Teardown

log = logging.getLogger(__name__)

Listed = dict[str, dict[str, Any]]  # container id -> the runtime's `list` entry


def _bundle_cgroups(bundle: Path, container_id: str) -> list[str]:
    """The container's and its conmon's cgroups, from the bundle's config.json (for orphans, which have no record)."""
    try:
        path = json.loads(BundlePaths(bundle).config.read_text())["linux"]["cgroupsPath"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
        return []
    return [path, f"{os.path.dirname(path.rstrip('/'))}/pycri-conmon-{container_id}"]


class Recovery:
    def __init__(self, table: Table, sandboxes: SandboxManager, images: ImageService, exits: Exits,
                 teardown: Teardown) -> None:
        self._t = table
        self._sandboxes = sandboxes
        self._images = images
        self._exits = exits
        self._teardown = teardown

    async def run(self) -> None:
        """Load records and reconcile them with the runtimes and conmon's exit files; remove orphans."""
        t = self._t
        records = t.store.load_all()
        live = await self._runtime_containers()
        for record in records:
            if not await restore_or_undo(record, "container", t.names, t.index, self._teardown.destroy):
                continue
            if record.state.live:
                handler = record.runtime_handler or t.config.runtime.default_runtime
                await self._reconcile(record, live.get(handler))
            if record.state == ContainerState.CREATED:  # its CreateContainer's reply may have been lost with the daemon
                t.claims.abandon(record.reserved_name)
        await self._remove_orphans(live)

    async def _runtime_containers(self) -> dict[str, Listed]:
        """handler -> {id: the runtime's `list` entry}, for every handler whose runtime could list its root.

        A handler missing here knows nothing: its containers are not taken for gone.
        """
        found: dict[str, Listed] = {}
        for name in self._t.config.runtime.handlers:
            try:
                found[name] = {entry.get("id", ""): entry for entry in await self._t.runtime(name).list()}
            except (CRIError, OCIRuntimeError, ValueError) as e:
                log.warning("listing the containers of runtime handler %s: %s", name, e)
        return found

    async def _reconcile(self, record: ContainerRecord, listed: Listed | None) -> None:
        """Make a created/running record tell the truth the runtime and conmon know after the daemon's absence.

        ``listed`` is its runtime's containers, None when the runtime could not say.
        """
        t, exits = self._t, self._exits
        if read_exit_status(t.conmon.exit_file(record.id)) is not None:
            exits.apply_exit(record)
            return
        entry = listed.get(record.id) if listed is not None else None
        status = entry.get("status") if entry else None
        monitor_alive = is_monitor_of(record.conmon_pid, record.id) if record.conmon_pid else False
        if record.restore_from and record.state == ContainerState.CREATED and not record.pid:
            conmon_pid = read_pid(BundlePaths(Path(record.bundle)).conmon_pid_file)
            if not conmon_pid:
                return  # not started yet: StartContainer restores its process
            if status == "running" and is_monitor_of(conmon_pid, record.id):  # restored while the daemon was down
                record.pid, record.conmon_pid = int(entry.get("pid") or 0) if entry else 0, conmon_pid
                record.move(ContainerState.RUNNING)
                record.started_at = mtime_ns(t.runtime(record.runtime_handler).root / record.id)
                t.save(record)
                exits.watch_monitor(record)
                return
        if record.state == ContainerState.CREATED and not record.pid:
            # The daemon died inside the runtime create, or after it (and maybe after the start) before the record's
            # writes that said so reached the disk (they are not waited for): the runtime and conmon know.
            conmon_pid = read_pid(BundlePaths(Path(record.bundle)).conmon_pid_file)
            if (entry is not None and status in ("created", "running", "paused") and conmon_pid
                    and is_monitor_of(conmon_pid, record.id)):
                log.info("container %s: its create was done by the runtime (%s) when the daemon stopped", record.id,
                         status)
                record.pid, record.conmon_pid = int(entry.get("pid") or 0), conmon_pid
                t.save(record)
                if status == "created":
                    exits.watch_monitor(record)
                    return
                monitor_alive = True  # started too: taken as started below
            else:
                log.warning("container %s: its create was interrupted by the daemon's stop; undoing it", record.id)
                if conmon_pid and is_monitor_of(conmon_pid, record.id):
                    kill(conmon_pid)
                exits.record_exit(record, 128, "StartError", time.time_ns(),
                                  "the daemon stopped while the container was being created")
                return
        if listed is not None and entry is None:
            log.warning("container %s: gone from runtime %s while the daemon was down", record.id,
                        record.runtime_handler)
            exits.record_exit(record, 255, "Error", time.time_ns(),
                              "the container was gone when pycri restarted (the host rebooted, or it was "
                              "deleted outside pycri); its exit status is unknown")
            return
        if not monitor_alive:  # conmon died while we were down, without writing an exit
            background(exits.monitor_lost(record), f"handling the lost monitor of {record.id}")
            return
        if record.state == ContainerState.CREATED and status in ("running", "paused"):  # started, then the daemon died
            record.move(ContainerState.RUNNING)
            record.started_at = mtime_ns(t.runtime(record.runtime_handler).root / record.id)
            t.save(record)
        exits.watch_monitor(record)

    async def _remove_orphans(self, live: dict[str, Listed]) -> None:
        """What a crash left with no record: bundles and what they name, rootfs mounts, exit files."""
        known = {r.id for r in self._t.index}
        for path in self._t.dir.glob(".removed-*"):  # a removed bundle whose deletion a crash interrupted
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
        for path in sorted(self._t.dir.iterdir()):
            if path.is_dir() and valid_id(path.name) and path.name not in known:
                await self._remove_orphan(path.name, live)
            elif path.is_dir() and path.name.startswith(RESTORE_UNPACK_PREFIX):  # a crash while unpacking
                log.warning("removing %s, an archive unpacked for a restore that never finished", path)
                shutil.rmtree(path, ignore_errors=True)
        for name in set(self._images.rootfs_ids()) - known:
            log.warning("removing orphan rootfs of container %s (no record)", name)
            try:
                for sandbox in self._sandboxes.list():  # a user-namespaced pod may hold a bind of it
                    if sandbox.userns_path and sandbox_host.exposed_rootfs(sandbox.sandbox_dir, name).exists():
                        await asyncio.to_thread(sandbox_host.unexpose_rootfs, sandbox.sandbox_dir, name)
                await self._images.remove_rootfs(name)
            except Exception as e:
                log.error("removing orphan rootfs %s: %s", name, e)
        for path in self._t.exit_dir.iterdir():
            if path.name.split(".")[0] not in known:
                log.info("removing stale exit file %s", path)
                path.unlink(missing_ok=True)

    async def _remove_orphan(self, container_id: str, live: dict[str, Listed]) -> None:
        """A bundle with no record: kill its conmon, delete its runtime container, remove its cgroups and itself.

        Only a runtime container whose bundle we made counts as ours; conmon goes first, so that it writes no
        exit file for the delete.
        """
        bundle = self._t.dir / container_id
        log.warning("removing orphan container %s (a bundle with no record)", container_id)
        conmon_pid = read_pid(BundlePaths(bundle).conmon_pid_file)
        if conmon_pid and is_monitor_of(conmon_pid, container_id):
            kill(conmon_pid)
            await monitor_gone(conmon_pid, container_id, KILL_WAIT)
        for handler, listed in live.items():
            if container_id in listed:
                try:
                    await self._t.runtime(handler).delete(container_id, force=True)
                except OCIRuntimeError as e:
                    log.error("removing orphan container %s from runtime %s: %s", container_id, handler, e)
        for path in _bundle_cgroups(bundle, container_id):
            failed = await asyncio.to_thread(cgroups.remove, path)
            if failed:
                log.error("orphan container %s: cgroups not removed: %s", container_id, failed)
        shutil.rmtree(bundle, ignore_errors=True)
