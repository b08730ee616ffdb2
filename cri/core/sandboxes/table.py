"""What every part of the sandbox manager shares: the records (on disk and by id), the reserved names and
abandoned-run claims, one lock per sandbox, the cgroup driver, the CNI manager, the host (PodHost), the container
manager's hooks, and the event bus."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable

from cri.core import events as ev
from cri.core.claims import Claims
from cri.state import Index, NameRegistry, RecordStore
from cri.state.sandbox_record import SandboxRecord
from hostos.cgroups.driver import driver
from netplugins import CNIManager, PodNetwork, PortMapping

from .files import parse_bandwidth
from .host import PodHost

ContainerHook = Callable[[str], Awaitable[None]]


class Table:
    def __init__(self, root: Path, state_dir: Path, cni: CNIManager | None, *, pod_cidr: Callable[[], str],
                 events: ev.EventBus | None, cgroup_manager: str, host: PodHost) -> None:
        self.host = host
        self.cgroups = driver(cgroup_manager)
        self.store = RecordStore(Path(root) / "sandboxes", SandboxRecord)
        self.dir = Path(state_dir) / "sandboxes"  # one directory per sandbox: namespaces, files, /dev/shm
        self.cni = cni
        self.index: Index[SandboxRecord] = Index("pod sandbox")
        self.names = NameRegistry("pod sandbox")
        self.claims = Claims(self.names, self.index)
        self.events = events
        self.stop_containers: ContainerHook | None = None    # the container manager's, for every container of a pod
        self.remove_containers: ContainerHook | None = None
        self._pod_cidr = pod_cidr
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """The sandbox's own lock; no lock is ever held across sandboxes."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def forget_lock(self, sandbox_id: str) -> None:
        self._locks.pop(sandbox_id, None)

    def publish(self, record: SandboxRecord, *kinds: int) -> None:
        """The sandbox's own lifecycle events, with its id as the container id (evented PLEG follows pods so)."""
        if self.events is None:
            return
        for kind in kinds:  # the deep copy only for a stream (in-process listeners take none)
            copy = record.model_copy(deep=True) if self.events.subscribers else None
            self.events.publish(ev.ContainerEvent(record.id, record.id, kind, time.time_ns(), copy))

    def alive(self, record: SandboxRecord) -> bool:
        """Whether what holds the pod together still exists: its network namespace and its infra process (checked
        at start, when both may have gone with a reboot or a crash)."""
        if record.netns_path and not self.host.namespace_alive(record.netns_path):
            return False
        if record.infra_pid and not self.host.infra_running(record.infra_pid, record.infra_start_time):
            return False
        return True

    def refresh(self, record: SandboxRecord) -> SandboxRecord:
        """A ready pod whose infra process died is NotReady (kubelet then recreates it). List and Status call this
        for every pod: the infra's liveness comes from memory (a pidfd watch); its namespaces, which the infra
        holds, need no look of their own while it runs."""
        if (record.state == "ready" and record.infra_pid
                and not self.host.infra_running(record.infra_pid, record.infra_start_time)):
            record.state = "notready"
            self.store.save(record, durable=False)
            self.publish(record, ev.STOPPED)
        return record

    def pod_network(self, record: SandboxRecord) -> PodNetwork:
        """What the CNI plugins are told of the pod, for ADD and DEL alike."""
        return PodNetwork(
            id=record.id, name=record.name, namespace=record.namespace, uid=record.uid, netns=record.netns_path,
            port_mappings=tuple(PortMapping(p.host_port, p.container_port, p.protocol, p.host_ip)
                                for p in record.port_mappings if p.host_port),
            bandwidth=parse_bandwidth(record.annotations),
            pod_cidr=self._pod_cidr() or None)
