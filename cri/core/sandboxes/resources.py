"""In-place pod-level resize (UpdatePodSandboxResources): the pod's resources plus its overhead, written into
the pod's own cgroup (RunPodSandbox's cgroup_parent).

kubelet calls it after resizing the pod cgroup itself, so for kubelet the writes restate what is there; they
matter to a caller that leaves the pod cgroup to the runtime, and they check that the limits hold (a memory
limit below what the pod uses is refused, and said so). The request is recorded with the
sandbox, so PodSandboxStatus verbose shows the pod's current resources.
"""

from __future__ import annotations

import asyncio

from cri.errors import FailedPrecondition, InvalidArgument
from cri.state.container_record import ResourcesSpec
from hostos.cgroups import limits as limits_module
from hostos.cgroups.limits import Limits

from .table import Table

CFS_PERIOD_US = 100_000  # what the kernel uses when no cpu period is set


def _sum(a: int, b: int) -> int:
    """A limit plus the overhead's; a side that sets nothing (0) or no limit (-1) leaves the other as it is."""
    if a <= 0:
        return a
    return a + max(b, 0)


def _rescaled(quota: int, period: int, to_period: int) -> int:
    return quota * (to_period or CFS_PERIOD_US) // (period or CFS_PERIOD_US)


def pod_limits(resources: ResourcesSpec, overhead: ResourcesSpec) -> Limits:
    """The pod cgroup's limits: its containers' resources plus the sandbox overhead, as kubelet sizes it."""
    period = resources.cpu_period or overhead.cpu_period
    quota = resources.cpu_quota
    if quota > 0:  # both quotas at the pod's period (a period left 0 is the kernel's default)
        quota = _rescaled(quota, resources.cpu_period, period)
        if overhead.cpu_quota > 0:
            quota += _rescaled(overhead.cpu_quota, overhead.cpu_period, period)
    memory = _sum(resources.memory_limit_in_bytes, overhead.memory_limit_in_bytes)
    swap = resources.memory_swap_limit_in_bytes
    if swap > 0:
        swap += max(overhead.memory_limit_in_bytes, 0)
    return Limits(
        cpu_period=period, cpu_quota=quota, cpu_shares=_sum(resources.cpu_shares, overhead.cpu_shares),
        memory=memory, memory_swap=swap, cpuset_cpus=resources.cpuset_cpus, cpuset_mems=resources.cpuset_mems,
        hugepages=tuple(resources.hugepage_limits), unified=dict(resources.unified))


async def update(t: Table, ref: str, resources: ResourcesSpec, overhead: ResourcesSpec) -> None:
    """UpdatePodSandboxResources: write the pod cgroup's new limits and record them."""
    record = t.index.get(ref)
    async with t.lock(record.id):
        if record.state != "ready":
            raise FailedPrecondition(f"pod sandbox {record.id} is not ready ({record.state}): nothing to resize")
        shared = t.cgroups.parent("")
        if record.cgroup_parent == shared:
            raise FailedPrecondition(f"pod sandbox {record.id} has no cgroup of its own (RunPodSandbox gave no "
                                     f"cgroup_parent; such pods share {shared})")
        limits = pod_limits(resources, overhead)
        try:
            _, undo = await asyncio.to_thread(limits_module.apply_undoable, record.cgroup_parent, limits)
        except ValueError as e:
            raise InvalidArgument(f"pod sandbox {record.id}: {e}") from None
        except OSError as e:
            raise FailedPrecondition(f"pod sandbox {record.id}: resizing its cgroup {record.cgroup_parent}: "
                                     f"{e.strerror or e}") from None
        try:  # the systemd driver: systemd must know them, or its next daemon-reload resets the files
            await t.cgroups.keep(record.cgroup_parent, limits)
        except OSError as e:
            await asyncio.to_thread(undo)
            raise FailedPrecondition(f"pod sandbox {record.id}: resizing its cgroup {record.cgroup_parent}: "
                                     f"{e.strerror or e}") from None
        record.resources, record.overhead = resources, overhead
        t.store.save(record, durable=False)
