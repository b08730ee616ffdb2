"""UpdatePodSandboxResources on the real daemon: the pod cgroup gets the pod's resources plus its overhead, the
running container is untouched, and what cannot be done is a clear status."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import grpc
import pytest
from cri.api.v1 import api_pb2

from hostos import cgroups
from hostos.cgroups.driver import resolve
from tests.integration.helpers_containers import container_config, exec_sync, pod_config, run, status

MiB = 1 << 20


@pytest.fixture
def cgroup_parent():
    """The pod's cgroup parent, kubelet's to make and remove (the daemon leaves it); removed after the daemon.
    Under the systemd driver (TEST_CGROUP_MANAGER) it is a slice, named by its cgroup path as critest does."""
    if resolve(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")) == "systemd":
        unit = f"pycriresize{uuid.uuid4().hex[:12]}.slice"
        yield f"/{unit}"
        subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=60)
        subprocess.run(["systemctl", "revert", unit], capture_output=True, timeout=60)
        return
    parent = f"/pycri-resize-{uuid.uuid4().hex[:12]}"
    yield parent
    cgroups.remove(parent)


@pytest.fixture
def resized_pod(cgroup_parent, env, tmp_path):  # noqa: F811
    d, _, _ = env
    cfg = pod_config(tmp_path / "logs", name="resized")
    cfg.linux.cgroup_parent = cgroup_parent
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    try:
        yield d, pod, cfg
    finally:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def _read(controller: str, parent: str, v1_name: str, v2_name: str) -> str:
    lay = cgroups.layout()
    if lay.is_v2:
        return (lay.unified / parent.strip("/") / v2_name).read_text().strip()
    return (lay.v1[controller] / parent.strip("/") / v1_name).read_text().strip()


def _resize(d, pod, resources, overhead=None):
    return d.runtime.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod, resources=resources, overhead=overhead or api_pb2.LinuxContainerResources()), timeout=30)


def test_resize_writes_the_pod_cgroup_and_leaves_the_container_running(resized_pod, cgroup_parent):
    d, pod, cfg = resized_pod
    cid = run(d, pod, cfg, container_config("app", ["sleep", "3600"]))
    resources = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=150000, cpu_shares=1536,
                                                memory_limit_in_bytes=96 * MiB)
    overhead = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=10000, cpu_shares=64,
                                               memory_limit_in_bytes=8 * MiB)
    _resize(d, pod, resources, overhead)
    assert _read("memory", cgroup_parent, "memory.limit_in_bytes", "memory.max") == str(104 * MiB)
    if cgroups.layout().is_v2:
        assert _read("cpu", cgroup_parent, "", "cpu.max") == "160000 100000"
    else:
        assert _read("cpu", cgroup_parent, "cpu.cfs_quota_us", "") == "160000"
        assert _read("cpu", cgroup_parent, "cpu.shares", "") == "1600"

    # Smaller again: the pod cgroup follows; the container keeps running.
    _resize(d, pod, api_pb2.LinuxContainerResources(memory_limit_in_bytes=48 * MiB))
    assert _read("memory", cgroup_parent, "memory.limit_in_bytes", "memory.max") == str(48 * MiB)
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING
    assert exec_sync(d, cid, ["true"]).exit_code == 0

    info = json.loads(d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
                                                 timeout=10).info["info"])
    assert info["resources"]["memory_limit_in_bytes"] == 48 * MiB

    with pytest.raises(grpc.RpcError) as e:  # a name that would leave the cgroup directory
        _resize(d, pod, api_pb2.LinuxContainerResources(
            hugepage_limits=[api_pb2.HugepageLimit(page_size="../../../tmp/x", limit=1)]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page size" in e.value.details()

    for bad in (api_pb2.LinuxContainerResources(cpuset_cpus="abc"), api_pb2.LinuxContainerResources(cpuset_mems="1-0")):
        with pytest.raises(grpc.RpcError) as e:  # a typo is the caller's, not the node's
            _resize(d, pod, bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpuset_" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            d.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(container_id=cid, linux=bad),
                                               timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING

    if not cgroups.layout().is_v2:
        with pytest.raises(grpc.RpcError) as e:
            _resize(d, pod, api_pb2.LinuxContainerResources(unified={"memory.high": str(40 * MiB)}))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cgroup v2" in e.value.details()


def test_a_limit_below_what_the_pod_uses_is_refused_and_named(resized_pod, cgroup_parent):
    d, pod, cfg = resized_pod
    cid = run(d, pod, cfg, container_config("filler", ["sh", "-c", "head -c 32m /dev/zero > /dev/shm/fill; sleep 3600"]))
    exec_sync(d, cid, ["sh", "-c", "while [ $(wc -c < /dev/shm/fill) -lt 33554432 ]; do sleep 0.1; done"], timeout=30)
    cpu_before = _read("cpu", cgroup_parent, "cpu.cfs_quota_us", "cpu.max")
    with pytest.raises(grpc.RpcError) as e:  # the cpu files are written first, then memory is refused
        _resize(d, pod, api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=20000,
                                                        memory_limit_in_bytes=4 * MiB))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cgroup_parent in e.value.details()
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING
    assert _read("cpu", cgroup_parent, "cpu.cfs_quota_us", "cpu.max") == cpu_before  # put back


def test_what_cannot_be_resized_is_a_clear_status(env):  # noqa: F811
    d, shared_parent_pod, _ = env
    with pytest.raises(grpc.RpcError) as e:
        _resize(d, "0" * 64, api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:  # no cgroup_parent: its pods share pycri's default cgroup
        _resize(d, shared_parent_pod, api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cgroup_parent" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _resize(d, shared_parent_pod, api_pb2.LinuxContainerResources(memory_limit_in_bytes=-5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
