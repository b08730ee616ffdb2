"""ListMetricDescriptors / ListPodSandboxMetrics / StreamPodSandboxMetrics and pod network stats on the real
daemon, for a pod with a shared PID namespace (an infra process) and one without."""

from __future__ import annotations

import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, exec_sync, pod_config, run

NETWORK = ["container_network_receive_bytes_total", "container_network_transmit_bytes_total",
           "container_network_receive_packets_total", "container_network_transmit_packets_total"]


@pytest.fixture
def pods(net_env, tmp_path):  # noqa: F811
    """(daemon, {pod id: config}, {pod id: container id}): the fixture's pod (shared PID namespace) and one whose
    containers each have their own (no infra process), both on the CNI bridge, each running a container that
    has sent a packet out of eth0."""
    d, shared, shared_cfg = net_env
    cfg = pod_config(tmp_path / "logs", name="no-infra", host_network=False)
    cfg.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    own = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    try:
        containers = {}
        for pod, pc, pid in ((shared, shared_cfg, api_pb2.POD), (own, cfg, api_pb2.CONTAINER)):
            linux = api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=pid)))
            cid = containers[pod] = run(d, pod, pc, container_config("talker", ["sleep", "600"], linux=linux))
            # Through the default route: ARP for the gateway and a SYN leave eth0 whether or not anything answers.
            exec_sync(d, cid, ["sh", "-c", "echo x | nc -w 1 169.254.1.1 9"], timeout=20)
        yield d, {shared: shared_cfg, own: cfg}, containers
    finally:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=own), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=own), timeout=60)


def test_pod_stats_have_the_network_of_every_pod(pods):
    d, configs, _ = pods
    for pod in configs:
        net = d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=30).stats.linux.network
        assert net.default_interface.name == "eth0", pod
        assert net.default_interface.tx_bytes.value > 0
        assert net.default_interface.rx_bytes.value >= 0


def _samples(pod_metrics, keys: dict[str, list[str]]) -> list[tuple[str, dict[str, str], int, str]]:
    """(name, labels, value, container id or '') of every metric, labels zipped onto the keys as kubelet does."""
    return [(m.name, dict(zip(keys[m.name], m.label_values, strict=True)), m.value.value, cid)
            for cid, metrics in [("", pod_metrics.metrics), *((c.container_id, c.metrics)
                                                             for c in pod_metrics.container_metrics)]
            for m in metrics]


def test_metrics_follow_their_descriptors(pods):
    d, configs, containers = pods
    descriptors = d.runtime.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(), timeout=30).descriptors
    keys = {x.name: list(x.label_keys) for x in descriptors}
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes", *NETWORK):
        assert name in keys and all(x.help for x in descriptors)
    assert {"container", "pod", "namespace"} <= set(keys["container_memory_working_set_bytes"])
    assert keys["container_network_receive_bytes_total"][-1] == "interface"

    listed = d.runtime.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    assert sorted(p.pod_sandbox_id for p in listed) == sorted(configs)
    for pm in listed:
        cfg = configs[pm.pod_sandbox_id]
        samples = _samples(pm, keys)  # a label count that does not match its descriptor fails here
        sent = [v for n, labels, v, cid in samples
                if n == "container_network_transmit_bytes_total" and labels["interface"] == "eth0" and not cid]
        assert sent and sent[0] > 0, f"no eth0 traffic for {cfg.metadata.name}"
        (ws,) = [(labels, v) for n, labels, v, cid in samples
                 if n == "container_memory_working_set_bytes" and cid == containers[pm.pod_sandbox_id]]
        assert ws[1] > 0
        assert ws[0]["container"] == "talker" and ws[0]["pod"] == cfg.metadata.name
        assert ws[0]["namespace"] == cfg.metadata.namespace
        assert ws[0]["id"] == containers[pm.pod_sandbox_id]
        pod_level = {n: labels for n, labels, _, cid in samples if not cid}
        assert pod_level["container_memory_usage_bytes"]["container"] == ""
        assert all(m.timestamp > 0 for m in pm.metrics)
        types = {n: m.metric_type for m in pm.metrics for n in [m.name]}
        assert types["container_network_receive_bytes_total"] == api_pb2.COUNTER
        assert types["container_memory_usage_bytes"] == api_pb2.GAUGE

    streamed = list(d.runtime.StreamPodSandboxMetrics(api_pb2.StreamPodSandboxMetricsRequest(), timeout=30))
    assert sorted(p.pod_sandbox_id for r in streamed for p in r.pod_sandbox_metrics) == sorted(configs)


def test_pods_without_a_cgroup_parent_report_their_own_figures(pods):
    """Neither pod names a cgroup_parent, so both live under the shared parent: each must still report only what
    its own processes use, in PodSandboxStats and in ListPodSandboxMetrics."""
    d, configs, containers = pods
    shared, own = configs
    fill = 24 << 20  # tmpfs pages, charged to the container that writes them
    exec_sync(d, containers[own], ["sh", "-c", f"head -c {fill} /dev/zero > /dev/shm/fill"], timeout=30)

    def usage(pod: str) -> int:
        return d.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod),
                                         timeout=30).stats.linux.memory.usage_bytes.value
    assert usage(own) >= fill
    assert usage(shared) < fill
    listed = d.runtime.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    pod_usage = {pm.pod_sandbox_id: m.value.value for pm in listed for m in pm.metrics
                 if m.name == "container_memory_usage_bytes"}
    assert pod_usage[own] >= fill and pod_usage[shared] < fill
