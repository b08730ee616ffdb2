"""In-place pod-level resize (UpdatePodSandboxResources): the pod's resources plus its overhead, written into
the pod's own cgroup (RunPodSandbox's cgroup_parent).

kubelet calls it after resizing the pod cgroup itself, so for kubelet the writes restate what is there; they
matter to a caller that leaves the pod cgroup to the runtime, and they check that the limits hold (a memory
limit below what the pod uses is refused by the kernel, and said so). The request is recorded with the
sandbox, so PodSandboxStatus verbose shows the pod's current resources.
"""

from __future__ import annotations

from cri.state.container_record import ResourcesSpec
from hostos.cgroups.limits import Limits


def _sum(a: int, b: int) -> int:
    """A limit plus the overhead's; a side that sets nothing (0) or no limit (-1) leaves the other as it is."""
    if a <= 0:
        return a
    return a + max(b, 0)


def pod_limits(resources: ResourcesSpec, overhead: ResourcesSpec) -> Limits:
    """The pod cgroup's limits: its containers' resources plus the sandbox overhead, as kubelet sizes it."""
    period = resources.cpu_period or overhead.cpu_period
    quota = resources.cpu_quota
    if quota > 0 and overhead.cpu_quota > 0:
        # the overhead's quota, rescaled to the resources' period
        quota += overhead.cpu_quota * period // (overhead.cpu_period or period)
    memory = _sum(resources.memory_limit_in_bytes, overhead.memory_limit_in_bytes)
    swap = resources.memory_swap_limit_in_bytes
    if swap > 0:
        swap += max(overhead.memory_limit_in_bytes, 0)
    return Limits(
        cpu_period=period, cpu_quota=quota, cpu_shares=_sum(resources.cpu_shares, overhead.cpu_shares),
        memory=memory, memory_swap=swap, cpuset_cpus=resources.cpuset_cpus, cpuset_mems=resources.cpuset_mems,
        hugepages=tuple(resources.hugepage_limits), unified=dict(resources.unified))
