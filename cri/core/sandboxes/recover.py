"""Reconciliation at start: the records taken back, a sandbox a crash left half-created undone, a ready one whose
namespaces or infra died marked NotReady, one whose directory a reboot cleared taken as gone; then the sweep of
what a crash left with no sandbox record to name it.

Only what is provably ours is swept: directories named by a sandbox id under our own state dir, entries of
our own CNI result cache (under our root), and cgroups named pycri-<id> for an id that one of those two names.
Another pycri on the same host (another root) may share the cgroup parent, but never our ids.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

from cri.core.undo import restore_or_undo
from cri.errors import CRIError
from cri.state.sandbox_record import SandboxRecord
from hostos import cgroups as cg
from netplugins import CNIManager

from .host import PodHost
from .table import Table
from .teardown import Teardown

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{64}$")


async def recover(t: Table, teardown: Teardown) -> None:
    """Load records; undo sandboxes a crash left half-created; mark those whose namespaces died NotReady;
    then sweep what a crash left with no record at all."""
    t.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    known = set()
    for record in t.store.load_all():
        known.add(record.id)
        if not Path(record.sandbox_dir).is_dir():
            _forget_host_state(t, record)
        if not await restore_or_undo(record, "sandbox", t.names, t.index, teardown.destroy):
            continue
        if record.state == "ready" and not t.alive(record):
            record.state = "notready"
            t.store.save(record, durable=False)
    await sweep(t.dir, t.cni, t.host, known)


def _forget_host_state(t: Table, record: SandboxRecord) -> None:
    """The state dir lost the sandbox's directory (a reboot clears it): its namespaces, mounts and processes
    are gone, and the pids it recorded may name other processes now. Its IP lease and CNI cache entry
    outlive a reboot, so network_ready stays set for Stop's CNI DEL."""
    if record.state != "ready" and not record.infra_parent_pid:
        return
    log.warning("sandbox %s: its directory %s is gone (the host rebooted?): its namespaces and processes are "
                "taken as gone", record.id, record.sandbox_dir)
    if record.state == "ready":
        record.state = "notready"
    record.infra_pid = record.infra_start_time = record.infra_parent_pid = 0
    t.store.save(record, durable=False)


async def sweep(sandboxes_dir: Path, cni: CNIManager | None, host: PodHost, known: set[str]) -> None:
    """Release the network, kill and remove the cgroups, and unmount and remove the directories of sandbox ids
    that have no record (`known` holds the ids that do). A failure is logged and retried at the next start."""
    try:
        dirs = [p for p in Path(sandboxes_dir).iterdir() if _ID_RE.match(p.name) and p.name not in known]
    except FileNotFoundError:
        dirs = []
    pods = [p for p in (cni.cached_pods() if cni is not None else []) if _ID_RE.match(p.id) and p.id not in known]
    # The network first, while the netns is still pinned: the plugins then find and delete the veth inside it.
    for pod in pods:
        assert cni is not None  # (pods come from its cache)
        log.warning("sandbox %s has no record but a cached CNI result: running CNI DEL to release its network",
                    pod.id)
        try:
            await cni.teardown(pod)
        except Exception as e:  # the cache entry stays, so the next start tries again
            log.warning("CNI DEL for sandbox %s without a record failed: %s", pod.id, e)
    ids = {d.name for d in dirs} | {p.id for p in pods}
    if ids:
        names = {f"pycri-{i}{kind}" for i in ids for kind in ("", ".scope")}
        cgroups = await asyncio.to_thread(host.find_cgroups, names)
        for cgroup in cgroups:
            log.warning("cgroup %s belongs to a sandbox without a record: killing its processes, removing it",
                        cgroup)
        host.kill_cgroups(cgroups)
        try:
            await host.remove_cgroups(cgroups)
        except cg.CgroupBusy as e:
            log.warning("removing cgroups of sandboxes without a record: %s", e)
    for directory in dirs:
        log.warning("sandbox directory %s has no record: unmounting its namespaces and /dev/shm, removing it",
                    directory)
        try:
            for target in host.mounts_below(directory):
                host.unmount(target)
        except CRIError as e:  # removing the tree under a mount would empty the mount: leave it all for now
            log.warning("sandbox directory %s stays: %s", directory, e)
            continue
        shutil.rmtree(directory, ignore_errors=True)
