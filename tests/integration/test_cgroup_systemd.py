"""cgroup_manager = "systemd": pods, containers and conmon in transient scopes below slices, what kubelet is told,
and nothing left behind. The scope tests need systemd as PID 1 on cgroup v2 (the node VM lane); the refusal
test needs a host without systemd (this build machine)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from conformance.daemon import Daemon
from hostos import cgroups
from hostos.cgroups import systemd
from tests.integration.helpers_containers import container_config, pod_config, run, start_env, status, wait_state

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SYSTEMD_V2 = systemd.running() and cgroups.layout().is_v2
needs_systemd = pytest.mark.skipif(not SYSTEMD_V2, reason="needs systemd as PID 1 on cgroup v2 (the node VM lane); "
                                                           "this host has neither")


def _cgroup_of(pid: int) -> str:
    """The v2 cgroup path of a process."""
    return next(line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))


def _comms(cgroup_path: str) -> set[str]:
    pids = (Path("/sys/fs/cgroup") / cgroup_path.lstrip("/") / "cgroup.procs").read_text().split()
    return {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if Path(f"/proc/{p}").exists()}


def _our_units() -> list[str]:
    out = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "pycri*"],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(systemd.running(), reason="systemd is PID 1 here: the refusal needs a host without it")
def test_systemd_asked_for_where_it_is_not_pid_1_refuses_to_start(tmp_path):
    d = Daemon({"runtime": {"cgroup_manager": "systemd"}}, base=tmp_path)
    proc = subprocess.run(d.command(), capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode != 0
    assert "systemd is not PID 1 here" in proc.stderr
    assert 'cgroup_manager = "cgroupfs"' in proc.stderr


def test_auto_reports_the_driver_this_host_has(daemon_factory):
    d = daemon_factory({"runtime": {"cgroup_manager": "auto"}})
    driver = d.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest()).linux.cgroup_driver
    assert driver == (api_pb2.SYSTEMD if systemd.running() else api_pb2.CGROUPFS)
    facts = json.loads(d.runtime.Status(api_pb2.StatusRequest(verbose=True)).info["cgroups"])
    assert facts["manager"] == ("systemd" if systemd.running() else "cgroupfs")
    assert facts["version"] == ("v2" if cgroups.layout().is_v2 else "hybrid" if cgroups.layout().unified else "v1")
    assert facts["pressure"] is (cgroups.layout().is_v2 and Path("/proc/pressure/cpu").exists())


@pytest.fixture(params=["", "runc"], ids=["default-handler", "runc"])
def systemd_env(daemon_factory, registry, tmp_path, request):  # noqa: F811
    """The env under the systemd driver, with pycri's default handler (crun where installed) and with runc."""
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"cgroup_manager": "systemd",
                                                                          "default_runtime": request.param}})


@needs_systemd
def test_pod_container_and_conmon_live_in_scopes_and_leave_none(systemd_env):
    d, pod, pod_cfg = systemd_env
    assert d.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest()).linux.cgroup_driver == api_pb2.SYSTEMD
    details = json.loads(d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod, verbose=True)).info["info"])
    assert details["cgroupPath"] == f"/pycri.slice/pycri-{pod}.scope"
    assert "catatonit" in _comms(details["cgroupPath"])  # the infra holds the pod's PID namespace in its scope
    cid = run(d, pod, pod_cfg, container_config("scoped", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    info = json.loads(status(d, cid, verbose=True).info["info"])
    assert info["runtimeSpec"]["linux"]["cgroupsPath"] == f"pycri.slice:pycri:{cid}"
    assert _cgroup_of(info["pid"]) == f"/pycri.slice/pycri-{cid}.scope"
    assert _cgroup_of(info["conmonPid"]) == f"/pycri.slice/pycri-conmon-{cid}.scope"
    assert {f"pycri-{cid}.scope", f"pycri-conmon-{cid}.scope", f"pycri-{pod}.scope"} <= set(_our_units())
    stats = d.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    assert not [u for u in _our_units() if cid in u or pod in u]
    assert not (Path("/sys/fs/cgroup/pycri.slice") / f"pycri-{cid}.scope").exists()


@needs_systemd
def test_a_kubelet_slice_parent_and_a_path_parent(systemd_env):
    d, _, _ = systemd_env
    slice_name = f"pycritest-pod{os.urandom(4).hex()}.slice"
    logs = Path(d.base) / "logs2"
    logs.mkdir()
    cfg = pod_config(logs)
    cfg.linux.cgroup_parent = slice_name
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    try:
        cid = run(d, pod, cfg, container_config("kube", ["sleep", "600"]))
        assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
        pid = json.loads(status(d, cid, verbose=True).info["info"])["pid"]
        assert _cgroup_of(pid) == f"/pycritest.slice/{slice_name}/pycri-{cid}.scope"
    finally:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        subprocess.run(["systemctl", "stop", slice_name, "pycritest.slice"], capture_output=True, timeout=30)
    cfg.linux.cgroup_parent = "/kubepods/burstable"
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slice name" in err.value.details()


@needs_systemd
def test_a_pod_resize_is_kept_by_systemd_across_daemon_reload(systemd_env):
    """UpdatePodSandboxResources writes the pod slice's files and tells systemd (SetUnitProperties): systemd
    re-applies a unit's own settings at daemon-reload, which would otherwise put back `max`."""
    d, _, _ = systemd_env
    slice_name = f"pycritest-resize{os.urandom(4).hex()}.slice"
    slice_dir = Path("/sys/fs/cgroup/pycritest.slice") / slice_name
    logs = Path(d.base) / "logs-resize"
    logs.mkdir()
    cfg = pod_config(logs)
    cfg.linux.cgroup_parent = slice_name
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    try:
        cid = run(d, pod, cfg, container_config("resized", ["sleep", "600"]))
        d.runtime.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod, resources=api_pb2.LinuxContainerResources(
                cpu_period=100000, cpu_quota=150000, cpu_shares=1024, memory_limit_in_bytes=96 << 20)), timeout=60)
        expected = {"memory.max": str(96 << 20), "cpu.max": "150000 100000", "cpu.weight": "39"}
        assert {name: (slice_dir / name).read_text().strip() for name in expected} == expected
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
        assert {name: (slice_dir / name).read_text().strip() for name in expected} == expected
        shown = subprocess.run(["systemctl", "show", "-p", "MemoryMax", "--value", slice_name],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        assert shown == str(96 << 20)  # systemd's own record of the limit
        assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING
    finally:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        subprocess.run(["systemctl", "stop", slice_name, "pycritest.slice"], capture_output=True, timeout=30)
        subprocess.run(["systemctl", "revert", slice_name], capture_output=True, timeout=30)
