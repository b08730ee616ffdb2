"""Pod sandboxes through the real daemon, with the real CNI plugins on a private bridge network."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_sandboxes import (cgroup_exists, in_netns, iptables_rules_mentioning, mounts_below,
                                                 pod_config, veths_on)

pytestmark = pytest.mark.integration


def run(d, config, handler="") -> str:
    return d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                   timeout=60).pod_sandbox_id


def status(d, pod_id, verbose=True):
    return d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose),
                                      timeout=30)


def info(d, pod_id) -> dict:
    return json.loads(status(d, pod_id).info["info"])


def stop(d, pod_id):
    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def remove(d, pod_id):
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


@contextlib.contextmanager
def serving(d, netns: str, page: str):
    """busybox httpd on port 8080 inside netns, serving `page` as /index.html."""
    www = Path(d.base) / "www"
    www.mkdir()
    (www / "index.html").write_text(page)
    server = subprocess.Popen(["nsenter", f"--net={netns}", "busybox", "httpd", "-f", "-p", "8080", "-h", str(www)])
    try:
        yield
    finally:
        server.kill()
        server.wait()


def curl(url: str) -> subprocess.CompletedProcess:
    """GET url from the host, retrying while the server is not listening yet."""
    return subprocess.run(["curl", "-sS", "--retry", "20", "--retry-connrefused", "--retry-delay", "0",
                           "--max-time", "10", url], capture_output=True, text=True)


def assert_no_leftovers(d, network, pod_id, details):
    assert not Path(details["netns"]).exists()
    assert not mounts_below(d.state_dir), "mounts left under the state dir"
    assert veths_on(network.bridge) == []
    assert iptables_rules_mentioning(pod_id) == []
    assert cgroup_exists(details["cgroupPath"]) == []
    assert network.leases() == []
    assert not Path(details["sandboxDir"]).exists()


@pytest.mark.parametrize("network", [True], indirect=True, ids=["ipmasq"])  # per-pod NAT rules to clean up
def test_pod_gets_ip_answers_ping_and_cleans_up(pods):
    d, network = pods
    pod_id = run(d, pod_config("web", dns_config=api_pb2.DNSConfig(
        servers=["10.0.0.10"], searches=["svc.cluster.local", "cluster.local"], options=["ndots:5"])))
    st = status(d, pod_id).status
    assert st.state == api_pb2.SANDBOX_READY
    assert st.network.ip.startswith(network.subnet.rsplit(".", 2)[0])
    details = info(d, pod_id)
    ping = subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", st.network.ip], capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert Path(details["resolvConf"]).read_text() == (
        "nameserver 10.0.0.10\nsearch svc.cluster.local cluster.local\noptions ndots:5\n")
    assert f"{st.network.ip}\tweb" in Path(details["hosts"]).read_text()
    uts = subprocess.run(["nsenter", f"--uts={details['utsns']}", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "web"
    assert "/dev/shm" not in details["shm"] and details["shm"] in mounts_below(d.state_dir)
    assert len(veths_on(network.bridge)) == 1
    assert cgroup_exists(details["cgroupPath"])
    assert iptables_rules_mentioning(pod_id), "ipMasq made no rule naming the pod"

    stop(d, pod_id)
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    assert network.leases() == [] and veths_on(network.bridge) == []
    assert iptables_rules_mentioning(pod_id) == []
    stop(d, pod_id)  # idempotent
    remove(d, pod_id)
    assert_no_leftovers(d, network, pod_id, details)
    remove(d, pod_id)  # idempotent
    stop(d, pod_id)    # unknown id is not an error
    with pytest.raises(grpc.RpcError) as err:
        status(d, pod_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_from_host_and_pod_to_pod(pods):
    d, network = pods
    a, b = run(d, pod_config("a")), run(d, pod_config("b"))
    ip_a, ip_b = status(d, a).status.network.ip, status(d, b).status.network.ip
    assert ip_a != ip_b
    with serving(d, info(d, a)["netns"], "hello from pod a\n"):
        from_host = curl(f"http://{ip_a}:8080/")
        assert from_host.stdout == "hello from pod a\n", from_host.stderr
        from_b = in_netns(info(d, b)["netns"], "busybox", "wget", "-q", "-O", "-", f"http://{ip_a}:8080/")
        assert from_b.stdout == "hello from pod a\n", from_b.stderr
    for pod_id in (a, b):
        stop(d, pod_id)
        remove(d, pod_id)
    assert network.leases() == []


def test_host_port_on_loopback_reaches_the_pod(pods):
    d, network = pods
    host_port = 20000 + os.getpid() % 20000
    pod_id = run(d, pod_config("ports", port_mappings=[
        api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080, host_port=host_port, host_ip="127.0.0.1")]))
    details = info(d, pod_id)
    with serving(d, details["netns"], "via hostPort\n"):
        response = curl(f"http://127.0.0.1:{host_port}/")
        assert response.stdout == "via hostPort\n", response.stderr
        assert iptables_rules_mentioning(pod_id), "portmap made no rule naming the pod"
    stop(d, pod_id)
    remove(d, pod_id)
    assert_no_leftovers(d, network, pod_id, details)
