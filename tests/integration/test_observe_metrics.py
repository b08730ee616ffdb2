"""The Prometheus endpoint of a running daemon: scraped while pods and containers start, its values move."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest
from cri.api.v1 import api_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers_containers import container_config, run, start_env
from tests.integration.helpers_sandboxes import installed_network

pytestmark = pytest.mark.integration


def metrics_port(d) -> int:
    """The port the daemon bound for [metrics] port = 0 (a port picked before the start could be taken by then)."""
    found = re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", d.log_path.read_text(errors="replace"))
    assert found, d.log_tail()
    return int(found[-1])


def scrape(port: int, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(port: int) -> dict[tuple[str, tuple], float]:
    _, text = scrape(port)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(values: dict, metric: str, **labels) -> float:
    return values.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_pods_and_containers_start(daemon_factory, registry, tmp_path):
    with installed_network(tmp_path) as network:
        settings = {"network": {"cni_conf_dir": str(network.conf_dir)},
                    "metrics": {"enable": True, "port": 0}}
        for d, pod, pod_cfg in start_env(daemon_factory, registry, tmp_path, settings, host_network=False):
            port = metrics_port(d)
            before = samples(port)
            assert value(before, "pycri_operations_total", operation="PullImage", code="OK") == 1
            assert value(before, "pycri_image_pulls_success_total", registry="example.test") == 1
            assert value(before, "pycri_image_pulls_bytes_total", registry="example.test") > 0
            assert value(before, "pycri_pod_start_latency_seconds_count") == 1
            assert value(before, "pycri_cni_operation_latency_seconds_count", operation="ADD") == 1
            assert value(before, "pycri_pods", state="ready") == 1
            assert value(before, "process_resident_memory_bytes") > 10e6
            assert value(before, "process_open_fds") > 0
            assert value(before, "process_threads") > 1

            cid = run(d, pod, pod_cfg, container_config("sleeper", ["sleep", "60"]))
            with pytest.raises(grpc.RpcError):
                d.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="f" * 64), timeout=10)
            after = samples(port)
            assert value(after, "pycri_containers", state="running") == 1
            assert value(after, "pycri_container_start_latency_seconds_count") == 1
            assert value(after, "pycri_operations_total", operation="StartContainer", code="OK") == 1
            assert value(after, "pycri_operations_errors_total", operation="ContainerStatus", code="NOT_FOUND") == 1
            assert (value(after, "pycri_operations_latency_seconds_count", operation="CreateContainer")
                    == value(after, "pycri_operations_total", operation="CreateContainer", code="OK") == 1)
            assert (value(after, "pycri_operations_latency_seconds_sum", operation="StartContainer")
                    > 0)

            d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
            stopped = samples(port)
            assert value(stopped, "pycri_containers", state="exited") == 1
            assert value(stopped, "pycri_cni_operation_latency_seconds_count", operation="DEL") == 1
            assert value(stopped, "pycri_pods", state="notready") == 1


def test_openmetrics_on_request_and_failed_pulls_by_registry(daemon_factory, tmp_path):
    d = daemon_factory({"metrics": {"enable": True, "port": 0}})
    port = metrics_port(d)
    with pytest.raises(grpc.RpcError):
        d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="127.0.0.1:9/nothing:1")),
                           timeout=30)
    ctype, text = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    failures = [line for line in text.splitlines() if line.startswith("pycri_image_pulls_failure_total{")]
    assert len(failures) == 1, failures
    assert 'registry="127.0.0.1:9"' in failures[0], failures
    ctype, _ = scrape(port)
    assert ctype.startswith("text/plain")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert err.value.code == 404


def test_a_metrics_port_in_use_stops_the_start_with_a_clear_error(daemon_factory):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(RuntimeError, match=r"metrics endpoint 127\.0\.0\.1:\d+: .*\[metrics\] port"):
            daemon_factory({"metrics": {"enable": True, "port": busy.getsockname()[1]}})
    finally:
        busy.close()


def test_an_oom_kill_is_counted_by_container_name(daemon_factory, registry, tmp_path):
    from tests.integration.helpers_containers import wait_state

    for d, pod, pod_cfg in start_env(daemon_factory, registry, tmp_path, {"metrics": {"enable": True, "port": 0}}):
        port = metrics_port(d)
        assert value(samples(port), "pycri_containers_oom_total") == 0
        cid = run(d, pod, pod_cfg, container_config("hog", ["sh", "-c", "head -c 200m /dev/zero | tail"],
                  linux=api_pb2.LinuxContainerConfig(resources=api_pb2.LinuxContainerResources(
                      memory_limit_in_bytes=24 << 20, memory_swap_limit_in_bytes=24 << 20))))
        assert wait_state(d, cid, api_pb2.CONTAINER_EXITED, timeout=60).reason == "OOMKilled"
        after = samples(port)
        assert value(after, "pycri_containers_oom_total") == 1
        assert value(after, "pycri_containers_oom_count_total", name="hog") == 1
