"""Crash safety: SIGKILL the daemon at every named point, restart it, and require no leak, no corrupt
record, and a successful retry of the call kubelet would repeat (conformance/faults.py)."""

from __future__ import annotations

import os
import time

import grpc
import pytest
from cri.api.v1 import api_pb2

from conformance import faults
from conformance.client import pod_config
from tests.imagebuild import build_busybox_image
from tests.integration.helpers_sandboxes import PrivateNetwork, wait_until

pytestmark = pytest.mark.integration

IMAGE = "faults.test/busybox:1"
MANAGER = os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")  # as tests/integration/conftest.py pins it


@pytest.fixture
def world_settings(registry, tmp_path):  # noqa: F811
    """Daemon settings with a private CNI network and a registry that serves IMAGE."""
    registry.push("busybox", "1", build_busybox_image())
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nprefix = "faults.test"\n'
                    f'location = "{registry.host}"\ninsecure = true\n')
    net = PrivateNetwork(tmp_path)
    net.install()
    try:
        yield {"storage": {"registries_conf": str(conf)}, "network": {"cni_conf_dir": str(net.conf_dir)},
               "runtime": {"cgroup_manager": MANAGER}}, net
    finally:
        net.cleanup()


@pytest.mark.parametrize("scenario", faults.SCENARIOS, ids=lambda s: s.point)
def test_crash_at_point_leaves_nothing_and_the_retry_succeeds(world_settings, scenario):
    settings, net = world_settings
    own_parent = f"/faults-{os.getpid()}" if MANAGER == "cgroupfs" else ""  # (a cgroupfs path)
    leaked = faults.run(scenario, settings, IMAGE, bridge=net.bridge, network=net.name, cgroup_parent=own_parent)
    assert not leaked, f"after a crash at {scenario.point}: {leaked}"
    assert net.leases() == [], "an IP lease outlived its pod"


def test_a_run_whose_caller_gave_up_is_handed_to_the_retry(daemon_factory, world_settings):
    """A different request under the name is a duplicate and does not use up the claim; the retry gets the pod."""
    settings, _ = world_settings
    d = daemon_factory(settings)
    config = pod_config("impatient")

    def listed() -> list[str]:
        return [p.id for p in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items]

    for _ in range(20):  # grpc may fail a call this short before its handler runs: then ask again
        with pytest.raises(grpc.RpcError) as e:  # the CNI ADD alone takes longer than this
            d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=0.005)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while not listed() and time.monotonic() < deadline:
            time.sleep(0.05)
        if listed():
            break
    [first] = listed()
    # The retry is handed the pod once the daemon knows its caller went away: at the cancellation, or when the run
    # ends after the deadline, whichever it sees first; a retry before either is a duplicate.
    seen = ("rpc=RunPodSandbox: the caller went away", "rpc=RunPodSandbox: done after the caller's deadline")
    wait_until(lambda: any(line in d.log_path.read_text(errors="replace") for line in seen),
               "the daemon saw the caller go", timeout=30)
    other = api_pb2.PodSandboxConfig()
    other.CopyFrom(config)
    other.labels["changed"] = "yes"
    with pytest.raises(grpc.RpcError) as e:
        d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=other), timeout=60)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and first in e.value.details()
    pod_id = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    assert pod_id == first and listed() == [first]
    status = d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == api_pb2.SANDBOX_READY
    with pytest.raises(grpc.RpcError) as e:  # claimed once: a second RunPodSandbox is a real duplicate
        d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert pod_id in e.value.details()
