"""ContainerStats, ListContainerStats and the pod figures of PodSandboxStats: cgroup figures, the CPU rate
between two samples, and the writable layer's use."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cri.core.images import ImageService
from cri.state.container_record import ContainerRecord
from cri.state.sandbox_record import SandboxRecord
from hostos import cgroups, netdev


@dataclass
class ContainerStats:
    record: ContainerRecord
    cgroup: cgroups.Stats
    usage_nano_cores: int | None
    writable_bytes: int
    writable_inodes: int


@dataclass
class PodStats:
    cgroup: cgroups.Stats
    usage_nano_cores: int | None
    network: list[netdev.InterfaceStats]
    containers: list[ContainerStats]


class Sampler:
    def __init__(self, images: ImageService, shared_parent: str) -> None:
        """`shared_parent`: the cgroup of pods that asked for none of their own (cgroups driver's parent(""))."""
        self._images = images
        self._shared_parent = shared_parent
        self._cpu_samples: dict[str, tuple[int, int]] = {}  # cgroup key -> (timestamp ns, CPU use ns)

    def forget(self, container_id: str) -> None:
        self._cpu_samples.pop(container_id, None)

    async def container(self, record: ContainerRecord) -> ContainerStats:
        sample = await asyncio.to_thread(cgroups.read_stats, record.cgroups_path)
        try:
            used, inodes = await self._images.writable_layer_usage(record.id)
        except Exception:
            used, inodes = 0, 0
        return ContainerStats(record, sample, self._nano_cores(record.id, sample), used, inodes)

    async def pod(self, sandbox: SandboxRecord, containers: list[ContainerRecord]) -> PodStats:
        """The pod cgroup's figures, its CPU rate, its network (not for host-network pods) and its containers.
        A pod that shares the default parent with others has the sum of its own cgroups: infra, containers and
        their conmons (what its own parent would hold), never the shared parent's total."""
        stats = list(await asyncio.gather(*(self.container(r) for r in containers)))
        if sandbox.cgroup_parent and sandbox.cgroup_parent != self._shared_parent:
            sample = await asyncio.to_thread(cgroups.read_stats, sandbox.cgroup_parent)
        else:
            paths = [sandbox.cgroup_path, *(r.conmon_cgroup for r in containers if r.conmon_cgroup)]
            others = await asyncio.gather(*(asyncio.to_thread(cgroups.read_stats, p) for p in paths if p))
            sample = cgroups.total([*others, *(s.cgroup for s in stats)])
        network = []
        if sandbox.netns_path:  # every pod with a network namespace of its own, an infra process or not
            network = await asyncio.to_thread(netdev.namespace_stats, sandbox.netns_path)
        return PodStats(sample, self._nano_cores("pod:" + sandbox.id, sample), network, stats)

    def _nano_cores(self, key: str, sample: cgroups.Stats) -> int | None:
        """CPU use rate since the previous sample of the same cgroup (kubelet asks every few seconds)."""
        if sample.cpu_usage_ns is None:
            return None
        previous = self._cpu_samples.get(key)
        self._cpu_samples[key] = (sample.timestamp_ns, sample.cpu_usage_ns)
        if previous is None or sample.timestamp_ns <= previous[0]:
            return None
        return max(0, (sample.cpu_usage_ns - previous[1]) * 1_000_000_000 // (sample.timestamp_ns - previous[0]))
