"""Resources, OOM, stats, log reopen and crun, observed from inside containers and through CRI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.oci import host_facts
from hostos import cgroups
from tests.integration.helpers_containers import (container_config, exec_sync, pod_config, pod_with_handler, run,
                                                  status, wait_log, wait_state)
from tests.integration.helpers_sandboxes import own_cgroup_parent

pytestmark = pytest.mark.integration
MiB = 1 << 20


def init_oom_score_adj(d, cid) -> int:
    """Of the container's first process, seen from the host (in a pod pid namespace it is not pid 1)."""
    pid = json.loads(status(d, cid, verbose=True).info["info"])["pid"]
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def cgroup_file(d, cid, controller_file: str) -> str:
    return exec_sync(d, cid, ["cat", f"/sys/fs/cgroup/{controller_file}"]).stdout.decode().strip()


@pytest.mark.skipif(cgroups.layout().is_v2, reason="reads cgroup v1 files")
def test_limits_are_applied_and_updated(env):
    d, pod, pod_cfg = env
    resources = api_pb2.LinuxContainerResources(cpu_shares=512, cpu_quota=50000, cpu_period=100000,
                                                memory_limit_in_bytes=64 * MiB, oom_score_adj=500)
    cid = run(d, pod, pod_cfg, container_config("lim", ["sleep", "600"],
                                                linux=api_pb2.LinuxContainerConfig(resources=resources)))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert cgroup_file(d, cid, "cpu/cpu.shares") == "512"
    assert cgroup_file(d, cid, "cpu/cpu.cfs_quota_us") == "50000"
    assert cgroup_file(d, cid, "memory/memory.limit_in_bytes") == str(64 * MiB)
    assert init_oom_score_adj(d, cid) == 500
    d.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 * MiB, cpu_shares=256)))
    assert cgroup_file(d, cid, "memory/memory.limit_in_bytes") == str(96 * MiB)
    assert cgroup_file(d, cid, "cpu/cpu.shares") == "256"
    assert status(d, cid).status.resources.linux.memory_limit_in_bytes == 96 * MiB


V2 = cgroups.layout().is_v2
PSI = V2 and Path("/proc/pressure/cpu").exists()


@pytest.mark.skipif(not V2, reason="reads cgroup v2 files; this host is cgroup v1 (the node VM lane runs it)")
def test_limits_are_applied_and_updated_on_cgroup_v2(env):
    d, pod, pod_cfg = env
    swap = cgroups.swap_accounting()
    resources = api_pb2.LinuxContainerResources(
        cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=64 * MiB,
        memory_swap_limit_in_bytes=96 * MiB if swap else 0, unified={"memory.high": str(48 * MiB), "pids.max": "77"})
    cid = run(d, pod, pod_cfg, container_config("lim2", ["sleep", "600"],
                                                linux=api_pb2.LinuxContainerConfig(resources=resources)))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert cgroup_file(d, cid, "cpu.max") == "50000 100000"
    assert cgroup_file(d, cid, "cpu.weight") not in ("", "100")  # shares 512 map below the default weight
    assert cgroup_file(d, cid, "memory.max") == str(64 * MiB)
    assert cgroup_file(d, cid, "memory.high") == str(48 * MiB)
    assert cgroup_file(d, cid, "pids.max") == "77"
    if swap:  # kubelet's memory+swap total becomes swap.max = total - memory
        assert cgroup_file(d, cid, "memory.swap.max") == str(32 * MiB)
    d.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 * MiB,
                                                                memory_swap_limit_in_bytes=96 * MiB if swap else 0,
                                                                cpu_quota=20000, cpu_period=100000)))
    assert cgroup_file(d, cid, "memory.max") == str(96 * MiB)
    assert cgroup_file(d, cid, "cpu.max") == "20000 100000"
    if swap:
        assert cgroup_file(d, cid, "memory.swap.max") == "0"  # total == memory: no swap, as kubelet's NoSwap
    assert status(d, cid).status.resources.linux.memory_limit_in_bytes == 96 * MiB


@pytest.mark.skipif(not PSI, reason="needs cgroup v2 with pressure stall information (the node VM lane has it)")
def test_stats_carry_pressure_on_cgroup_v2(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("psi", ["sh", "-c", "yes > /dev/null"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    stats = d.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.cpu.HasField("psi")
    assert stats.memory.HasField("psi")
    assert stats.io.HasField("psi")
    assert stats.memory.working_set_bytes.value > 0
    # A pod without a cgroup of its own sums its cgroups' figures; stall times do not add up, so it has none.
    pod_stats = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    assert not pod_stats.linux.cpu.HasField("psi") and pod_stats.linux.cpu.usage_core_nano_seconds.value > 0
    with own_cgroup_parent() as parent:  # kubelet gives each pod one: its pressure is the pod's
        cfg = pod_config(Path(d.base) / "logs-psi", name="psi-own")
        Path(cfg.log_directory).mkdir()
        cfg.linux.cgroup_parent = parent
        own = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
        try:
            run(d, own, cfg, container_config("psi-own", ["sh", "-c", "yes > /dev/null"]))
            pod_stats = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=own)).stats
            assert pod_stats.linux.cpu.HasField("psi") and pod_stats.linux.io.HasField("psi")
        finally:
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=own), timeout=60)
            d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=own), timeout=60)


@pytest.mark.skipif(not V2, reason="cgroup v1's kernel refuses a memory limit below use by itself (EBUSY); the guard "
                                    "is for v2, which takes any memory.max and OOM-kills to fit (the node VM lane)")
def test_a_container_limit_below_what_it_uses_is_refused_on_cgroup_v2(env):
    """Like a pod resize: a container must not be OOM-killed by an update; the limit and the container stay."""
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config(
        "shmfill", ["sh", "-c", "head -c 32m /dev/zero > /dev/shm/fill; sleep 3600"],
        linux=api_pb2.LinuxContainerConfig(resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=256 * MiB))))
    exec_sync(d, cid, ["sh", "-c", "while [ $(wc -c < /dev/shm/fill) -lt 33554432 ]; do sleep 0.1; done"], timeout=30)

    def update(limit: int) -> None:
        d.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit)), timeout=60)

    with pytest.raises(grpc.RpcError) as e:
        update(4 * MiB)  # tmpfs pages: no reclaim without swap
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cid in e.value.details() and "reclaim cannot free" in e.value.details()
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING
    assert cgroup_file(d, cid, "memory.max") == str(256 * MiB)
    assert status(d, cid).status.resources.linux.memory_limit_in_bytes == 256 * MiB
    update(96 * MiB)  # above what it uses: taken
    assert cgroup_file(d, cid, "memory.max") == str(96 * MiB)
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING


def test_oom_score_adj_below_the_daemons_own_is_clamped(env):
    floor = host_facts.oom_score_adj_floor()
    if floor is None:
        pytest.skip("the daemon has CAP_SYS_RESOURCE: negative scores are honoured")
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("oomadj", ["sleep", "600"], linux=api_pb2.LinuxContainerConfig(
        resources=api_pb2.LinuxContainerResources(oom_score_adj=-997))))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert init_oom_score_adj(d, cid) == floor


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_memory_hog_is_reported_oomkilled_with_137(env, tmp_path, handler, request):
    """Under the systemd driver the container's scope (and its memory.events) is gone a few ms after the kill;
    crun's OOMKilled was reported as Error there (critest in the node VM)."""
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, pod_cfg = pod_with_handler(d, tmp_path, handler, name=f"hog-{handler}")
    cid = run(d, pod, pod_cfg, container_config(
        "hog", ["sh", "-c", "head -c 200m /dev/zero | tail"],
        linux=api_pb2.LinuxContainerConfig(resources=api_pb2.LinuxContainerResources(
            memory_limit_in_bytes=24 * MiB, memory_swap_limit_in_bytes=24 * MiB))))
    st = wait_state(d, cid, api_pb2.CONTAINER_EXITED, timeout=60)
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 137, "OOMKilled")


def test_stats_move_under_load(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("busy", ["sh", "-c", "yes > /dev/null"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING

    def sample():
        return d.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats

    first = sample()
    assert first.attributes.id == cid and first.memory.working_set_bytes.value > 0
    deadline = time.monotonic() + 20
    second = sample()
    while second.cpu.usage_core_nano_seconds.value <= first.cpu.usage_core_nano_seconds.value:
        assert time.monotonic() < deadline, "CPU usage never grew"
        time.sleep(0.1)
        second = sample()
    assert second.cpu.usage_nano_cores.value > 0
    listed = d.runtime.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [cid]
    pod_stats = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    assert pod_stats.attributes.id == pod and pod_stats.linux.cpu.usage_core_nano_seconds.value > 0
    assert [c.attributes.id for c in pod_stats.linux.containers] == [cid]
    listed_pods = d.runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in listed_pods] == [pod]


def test_reopen_log_after_rotation(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("rot", ["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); "
                                                                    "sleep 0.05; done"]))
    log = Path(pod_cfg.log_directory) / "rot.log"
    wait_log(pod_cfg, "rot", lambda ls: len(ls) >= 2)
    log.rename(log.with_suffix(".log.1"))
    d.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert log.exists()  # the new file is there as soon as the call returns
    lines = wait_log(pod_cfg, "rot", lambda ls: len(ls) >= 2)
    assert len(lines) >= 2 and all(tag == "F" for _, tag, _ in lines)
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_pod_stats_count_the_pods_network_traffic(net_env):
    d, pod, pod_cfg = net_env
    cid = run(d, pod, pod_cfg, container_config("talker", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    before = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats.linux.network
    assert before.default_interface.name == "eth0"
    # Through the default route: ARP for the gateway and a SYN leave eth0 whether or not anything answers.
    exec_sync(d, cid, ["sh", "-c", "echo x | nc -w 1 169.254.1.1 9"], timeout=20)
    after = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats.linux.network
    assert after.default_interface.tx_bytes.value > before.default_interface.tx_bytes.value
