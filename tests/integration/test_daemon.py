"""The daemon as kubelet and crictl first meet it: handshake, status, errors, lifetime."""

import os
import signal
import stat
import subprocess
import sys
import time

import grpc
import pytest
from cri.api.v1 import api_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conformance.daemon import REPO, Daemon
from hostos.cgroups.driver import driver

pytestmark = pytest.mark.integration


def test_version_names_pycri_and_cri_v1(daemon):
    v = daemon.runtime.Version(api_pb2.VersionRequest(version="v1"))
    assert v.runtime_name == "pycri"
    assert v.runtime_api_version == "v1"
    assert v.runtime_version.count(".") >= 2


def test_status_reports_runtime_ready_and_network_not_ready_without_cni(daemon):
    conditions = {c.type: c for c in daemon.runtime.Status(api_pb2.StatusRequest()).status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is False
    assert conditions["NetworkReady"].reason
    assert conditions["NetworkReady"].message


def test_verbose_status_carries_the_config_as_json(daemon):
    import json

    info = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    assert json.loads(info["config"])["root"] == str(daemon.root)


def test_runtime_config_reports_the_cgroup_driver_in_use(daemon):
    """The fixture's daemon runs the driver TEST_CGROUP_MANAGER names (cgroupfs unless told; the node VM lane runs
    `auto`, i.e. systemd there); kubelet must be told that one."""
    used = driver(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")).name
    expected = {"cgroupfs": api_pb2.CGROUPFS, "systemd": api_pb2.SYSTEMD}[used]
    assert daemon.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest()).linux.cgroup_driver == expected


def test_update_runtime_config_rejects_a_bad_cidr(daemon):
    ok = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr="10.244.0.0/24")))
    daemon.runtime.UpdateRuntimeConfig(ok)
    info = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    assert "10.244.0.0/24" in info["podCIDR"]
    bad = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr="10.300.0.0/24")))
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime.UpdateRuntimeConfig(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10.300.0.0/24" in e.value.details()


def test_every_cri_v1_rpc_has_a_handler(daemon):
    """An RPC without one would answer UNIMPLEMENTED (tests/unit/test_call_wrapper.py); CRI v1.36 has none left."""
    from cri.server.servicer import discover_handlers

    handlers, _ = discover_handlers()
    names = {m.name for s in api_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert sorted(names - set(handlers)) == []
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id="x"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_service_is_serving(daemon):
    stub = health_pb2_grpc.HealthStub(daemon.channel)
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_socket_is_owner_and_group_only(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660


def test_a_second_daemon_on_the_same_root_refuses_to_start(daemon):
    second = Daemon(daemon.settings | {"listen": f"unix://{daemon.base}/other.sock"}, base=daemon.base)
    proc = subprocess.run(second.command(), capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode != 0
    assert "already using root" in proc.stderr
    assert daemon.runtime.Version(api_pb2.VersionRequest()).runtime_name == "pycri"


def test_bad_config_is_rejected_naming_the_file_and_key(tmp_path):
    conf = tmp_path / "pycri.conf"
    conf.write_text('root = "/tmp/x"\n[runtime]\ndefault_runtme = "runc"\n')
    proc = subprocess.run([sys.executable, "-m", "cri", "daemon", "--config", str(conf)],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2
    assert str(conf) in proc.stderr
    assert "runtime.default_runtme" in proc.stderr


def test_a_sigterm_as_soon_as_the_socket_appears_is_a_clean_shutdown(daemon):
    """A client (kubelet, systemd, a test) may stop the daemon the moment its socket appears: the stop must still
    be the clean one (exit 0, socket removed, clean marker), not SIGTERM's default action mid-start."""
    assert daemon.stop() == 0
    daemon.proc = subprocess.Popen(daemon.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                                   start_new_session=True)
    deadline = time.monotonic() + 60
    while not daemon.socket.exists():
        assert daemon.proc.poll() is None and time.monotonic() < deadline, "the daemon did not create its socket"
        time.sleep(0.001)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0
    assert not daemon.socket.exists()
    assert (daemon.root / "clean-shutdown").exists()


def test_graceful_shutdown_removes_the_socket_and_leaves_a_clean_marker(daemon):
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    assert (daemon.root / "clean-shutdown").exists()
    daemon.start()
    assert not (daemon.root / "clean-shutdown").exists()
