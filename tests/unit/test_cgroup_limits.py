"""Pod-level limits: what is written where on cgroup v1 and v2, the v1 memory/memsw order, and the pod sum."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cri.core.sandboxes.resources import pod_limits
from cri.state.container_record import ResourcesSpec
from hostos.cgroups import Layout
from hostos.cgroups import limits as limits_module
from hostos.cgroups.limits import Limits, planned_writes, shares_to_weight
from hostos.cgroups.limits import apply as apply_limits

V2 = Layout(unified=Path("/u"), v1={})
V1 = Layout(unified=None, v1={"cpu": Path("/c"), "memory": Path("/m"), "cpuset": Path("/s"), "hugetlb": Path("/h")})


def test_v2_files():
    limits = Limits(cpu_period=100000, cpu_quota=50000, cpu_shares=1024, memory=64 << 20, memory_swap=96 << 20,
                    cpuset_cpus="0", hugepages=(("2MB", 4 << 20),), unified={"memory.high": "60000000"})
    assert planned_writes(limits, V2) == [
        ("", "cpu.max", "50000 100000"), ("", "cpu.weight", "39"), ("", "memory.max", str(64 << 20)),
        ("", "memory.swap.max", str(32 << 20)), ("", "cpuset.cpus", "0"), ("", "hugetlb.2MB.max", str(4 << 20)),
        ("", "memory.high", "60000000")]
    assert planned_writes(Limits(cpu_quota=-1, cpu_period=50000), V2) == [("", "cpu.max", "max 50000")]


def test_v1_files_and_unified_is_refused():
    limits = Limits(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory=1 << 30)
    assert planned_writes(limits, V1) == [
        ("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "50000"), ("cpu", "cpu.shares", "512"),
        ("memory", "memory.limit_in_bytes", str(1 << 30))]
    with pytest.raises(ValueError, match="cgroup v2"):
        planned_writes(Limits(unified={"memory.high": "1"}), V1)
    assert planned_writes(Limits(), V1) == []


def test_shares_to_weight_matches_the_runtimes():
    assert (shares_to_weight(2), shares_to_weight(1024), shares_to_weight(262144)) == (1, 39, 10000)


def test_v1_raising_memory_above_memsw_writes_memsw_first(tmp_path, monkeypatch):
    """The kernel refuses (EINVAL) memory.limit_in_bytes above memory.memsw.limit_in_bytes: the pair is swapped."""
    memory = tmp_path / "m"
    pod = memory / "pod"
    pod.mkdir(parents=True)
    (pod / "memory.limit_in_bytes").write_text("100")
    (pod / "memory.memsw.limit_in_bytes").write_text("100")
    real_write = limits_module._write

    def kernel_like(path: Path, value: str) -> None:
        if path.name == "memory.limit_in_bytes" and int(value) > int((pod / "memory.memsw.limit_in_bytes").read_text()):
            raise OSError(errno.EINVAL, f"writing {value} to {path}: Invalid argument")
        real_write(path, value)

    monkeypatch.setattr(limits_module, "_write", kernel_like)
    written = apply_limits("/pod", Limits(memory=200, memory_swap=300), Layout(unified=None, v1={"memory": memory}))
    assert (pod / "memory.limit_in_bytes").read_text() == "200"
    assert (pod / "memory.memsw.limit_in_bytes").read_text() == "300"
    assert written == [str(pod / "memory.memsw.limit_in_bytes"), str(pod / "memory.limit_in_bytes")]
    with pytest.raises(OSError, match="memory.limit_in_bytes"):  # refused for another reason: said so
        apply_limits("/pod", Limits(memory=900), Layout(unified=None, v1={"memory": memory}))


def test_a_missing_swap_file_means_no_swap_accounting_and_is_skipped(tmp_path):
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "memory.max").write_text("max")
    apply_limits("/pod", Limits(memory=300, memory_swap=400), Layout(unified=tmp_path, v1={}))
    assert (pod / "memory.max").read_text() == "300" and not (pod / "memory.swap.max").exists()


def test_a_refused_write_puts_back_the_files_written_before_it(tmp_path, monkeypatch):
    pod = tmp_path / "pod"
    pod.mkdir()
    for name, value in (("cpu.max", "max 100000"), ("cpu.weight", "100"), ("memory.max", "max")):
        (pod / name).write_text(value + "\n")  # as the kernel shows them
    real_write = limits_module._write

    def kernel_like(path: Path, value: str) -> None:
        if path.name == "memory.max" and int(value) < 1000:
            raise OSError(errno.EBUSY, f"writing {value} to {path}: Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(limits_module, "_write", kernel_like)
    with pytest.raises(OSError, match="memory.max"):
        apply_limits("/pod", Limits(cpu_quota=50000, cpu_shares=512, memory=10), Layout(unified=tmp_path, v1={}))
    assert (pod / "cpu.max").read_text() == "max 100000"
    assert (pod / "cpu.weight").read_text() == "100"
    assert (pod / "memory.max").read_text() == "max\n"


def test_pod_limits_add_the_overhead():
    resources = ResourcesSpec(cpu_period=100000, cpu_quota=200000, cpu_shares=2048, memory_limit_in_bytes=256 << 20,
                              cpuset_cpus="0-1")
    overhead = ResourcesSpec(cpu_period=50000, cpu_quota=5000, cpu_shares=100, memory_limit_in_bytes=16 << 20)
    limits = pod_limits(resources, overhead)
    assert (limits.cpu_period, limits.cpu_quota, limits.cpu_shares) == (100000, 210000, 2148)
    assert limits.memory == 272 << 20 and limits.cpuset_cpus == "0-1"
    # No limit stays no limit, whatever the overhead.
    assert pod_limits(ResourcesSpec(cpu_quota=-1), overhead).cpu_quota == -1
    assert pod_limits(ResourcesSpec(), overhead).memory == 0


def test_quotas_without_any_period_add_up_at_the_kernels_default_period():
    # UpdatePodSandboxResources with cpu_quota but no cpu_period, for the pod and its overhead: no division by 0
    limits = pod_limits(ResourcesSpec(cpu_quota=50000), ResourcesSpec(cpu_quota=5000))
    assert (limits.cpu_period, limits.cpu_quota) == (0, 55000)
    # 0.5 CPU (at the default period) plus 0.1 CPU of overhead, at the overhead's period
    assert pod_limits(ResourcesSpec(cpu_quota=50000), ResourcesSpec(cpu_quota=5000, cpu_period=50000)).cpu_quota == 30000


@pytest.mark.parametrize("limits", [Limits(unified={"../../etc/passwd": "x"}), Limits(unified={"memory.max/..": "1"}),
                                    Limits(unified={"cgroup..procs": "1"}), Limits(hugepages=(("../2MB", 1),)),
                                    Limits(hugepages=(("2MB/x", 1),)), Limits(unified={"cgroup.procs": "1"}),
                                    Limits(unified={"cgroup.kill": "1"})])
def test_names_that_would_leave_the_cgroup_directory_are_refused(limits):
    with pytest.raises(ValueError):
        planned_writes(limits, V2)


def test_a_total_adds_what_each_cgroup_has_and_claims_no_limit():
    from hostos.cgroups import Pressure, Stats, total
    gone = Stats(timestamp_ns=5)  # an exited container's cgroup: every figure None
    a = Stats(timestamp_ns=7, cpu_usage_ns=10, memory_usage=100, memory_working_set=80, pids=2, memory_limit=512,
              memory_pressure=Pressure(None, None))
    b = Stats(timestamp_ns=6, cpu_usage_ns=5, memory_usage=50, memory_working_set=40, pids=1, swap_usage=3)
    summed = total([gone, a, b])
    assert (summed.timestamp_ns, summed.cpu_usage_ns, summed.memory_usage, summed.memory_working_set,
            summed.pids, summed.swap_usage) == (7, 15, 150, 120, 3, 3)
    assert summed.memory_rss is None and summed.memory_limit is None and summed.memory_pressure is None


def test_a_later_step_that_fails_can_put_back_what_was_written(tmp_path):
    pod = tmp_path / "pod"
    pod.mkdir()
    for name, value in (("cpu.max", "max 100000"), ("memory.max", "max")):
        (pod / name).write_text(value + "\n")
    written, undo = limits_module.apply_undoable("/pod", Limits(cpu_quota=50000, memory=64 << 20),
                                                 Layout(unified=tmp_path, v1={}))
    assert written == [str(pod / "cpu.max"), str(pod / "memory.max")]
    assert (pod / "memory.max").read_text() == str(64 << 20)
    undo()  # e.g. systemd refused to record them (the systemd driver's SetUnitProperties)
    assert (pod / "cpu.max").read_text() == "max 100000" and (pod / "memory.max").read_text() == "max"


def test_v2_refuses_to_shrink_below_what_reclaim_cannot_free(tmp_path, monkeypatch):
    """cgroup v2 would take the limit and OOM-kill the pod to fit; v1 answers EBUSY. Both refuse, untouched."""
    monkeypatch.setattr(limits_module, "_host_swap", lambda: False)
    pod = tmp_path / "pod"
    pod.mkdir()
    for name, value in (("cpu.max", "max 100000"), ("memory.max", "max"), ("memory.swap.max", "max"),
                        ("memory.current", str(40 << 20)),
                        ("memory.stat", f"anon {6 << 20}\nfile {33 << 20}\nshmem {32 << 20}\nslab_reclaimable 1024\n")):
        (pod / name).write_text(value + "\n")
    v2 = Layout(unified=tmp_path, v1={})
    with pytest.raises(OSError, match="uses 40893440 bytes that reclaim cannot free") as e:  # 40M - 1M cache - 1K slab
        apply_limits("/pod", Limits(cpu_quota=20000, memory=4 << 20), v2)
    assert e.value.errno == errno.EBUSY
    assert (pod / "cpu.max").read_text().strip() == "max 100000" and (pod / "memory.max").read_text() == "max\n"
    apply_limits("/pod", Limits(memory=40 << 20), v2)  # page cache is reclaimed: a limit above the rest is taken
    assert (pod / "memory.max").read_text() == str(40 << 20)
    monkeypatch.setattr(limits_module, "_host_swap", lambda: True)  # it may swap: the kernel pages out, no kill
    apply_limits("/pod", Limits(memory=4 << 20), v2)
    assert (pod / "memory.max").read_text() == str(4 << 20)


def test_a_limit_the_runtime_writes_is_checked_the_same_way_on_v2_only(tmp_path, monkeypatch):
    """UpdateContainerResources goes through `runc update`, which writes memory.max itself: the check comes first."""
    monkeypatch.setattr(limits_module, "_host_swap", lambda: False)
    ctr = tmp_path / "pod" / "ctr"
    ctr.mkdir(parents=True)
    for name, value in (("memory.max", "max"), ("memory.swap.max", "0"), ("memory.current", str(40 << 20)),
                        ("memory.stat", f"anon {6 << 20}\nfile {33 << 20}\nshmem {32 << 20}\n")):
        (ctr / name).write_text(value + "\n")
    v2 = Layout(unified=tmp_path, v1={})
    with pytest.raises(OSError, match="uses 40894464 bytes that reclaim cannot free") as e:  # 40M - 1M cache
        limits_module.refuse_memory_shrink_below_use("/pod/ctr", 4 << 20, v2)
    assert e.value.errno == errno.EBUSY
    limits_module.refuse_memory_shrink_below_use("/pod/ctr", 39 << 20, v2)  # what it cannot free fits: fine
    limits_module.refuse_memory_shrink_below_use("/pod/ctr", 0, v2)  # no memory limit asked for
    limits_module.refuse_memory_shrink_below_use("/pod/ctr", 4 << 20, V1)  # v1's kernel refuses by itself
    assert (ctr / "memory.max").read_text() == "max\n"  # only read
