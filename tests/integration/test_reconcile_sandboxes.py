"""Sandboxes across daemon crashes and restarts: dead infra processes, orphans swept at start, a simulated reboot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_sandbox_helpers import (PrivateNetwork, cgroup_exists, mounts_below, pod_config,
                                               remove_all_pods, veths_on)
from tests.integration.test_sandbox_lifecycle import info, remove, run, status, stop
from tests.integration.test_sandbox_modes import linux

pytestmark = pytest.mark.integration


@pytest.fixture
def network(tmp_path):
    net = PrivateNetwork(tmp_path, with_portmap=False)
    net.install()
    try:
        yield net
    finally:
        net.cleanup()


@pytest.fixture
def pods(daemon_factory, network):
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir)}})
    try:
        yield d, network
    finally:
        remove_all_pods(d)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def _wait_until(predicate, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def _record_path(d, pod_id: str) -> Path:
    return d.root / "sandboxes" / f"{pod_id}.json"


def _stop_remove_and_check_clean(d, network, pod_id: str, details: dict) -> None:
    stop(d, pod_id)
    stop(d, pod_id)  # idempotent
    remove(d, pod_id)
    assert network.leases() == [] and veths_on(network.bridge) == []
    assert not mounts_below(d.state_dir)
    assert cgroup_exists(details["cgroupPath"]) == []
    assert not Path(details["sandboxDir"]).exists()


def test_an_infra_left_a_zombie_under_pid_1_by_a_crash_is_gone_not_running(pods):
    """The daemon dies, then the infra's parent: the infra is killed with it and, re-parented to a PID 1
    that never reaps, stays a zombie. It holds nothing: the pod is NotReady and Stop does not wait for it."""
    d, network = pods
    pod_id = run(d, pod_config("zombie-infra", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    infra = details["pid"]
    d.kill()
    os.kill(_stat(infra)[1], signal.SIGKILL)  # its parent, `unshare`: the infra dies with it (PDEATHSIG)
    _wait_until(lambda: _stat(infra) is None or _stat(infra)[0] == "Z", "the infra is dead")
    d.start()
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    _stop_remove_and_check_clean(d, network, pod_id, details)


def test_stop_after_a_crash_does_not_wait_for_a_process_that_reused_the_infra_parent_pid(pods):
    """After a restart the recorded parent pid may name another process; Stop kills the infra and leaves it be."""
    d, network = pods
    pod_id = run(d, pod_config("reused-pid", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    d.kill()
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        record = json.loads(_record_path(d, pod_id).read_text())
        record["infra_parent_pid"] = stranger.pid  # what pid reuse does while the daemon is down
        _record_path(d, pod_id).write_text(json.dumps(record))
        d.start()
        assert status(d, pod_id).status.state == api_pb2.SANDBOX_READY  # the infra itself still runs
        _stop_remove_and_check_clean(d, network, pod_id, details)
        assert stranger.poll() is None, "Stop killed a process that merely reused the infra parent's pid"
        infra = _stat(details["pid"])
        assert infra is None or infra[0] == "Z"
    finally:
        stranger.kill()
        stranger.wait()
