"""ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics: the cAdvisor-style metrics kubelet
serves on /metrics/cadvisor when its PodAndContainerStatsFromCRI gate is on.

kubelet asks for the descriptors once and then turns each Metric into a Prometheus sample of that name, with
label_values zipped onto the descriptor's label_keys, so the set below is fixed for the daemon's lifetime.
Names, types and labels follow cAdvisor (container, pod, namespace, image, plus CRI-O's id and name), so
dashboards written for cAdvisor keep working. Figures come from the same reads as PodSandboxStats: the pod's
cgroup for pod-level metrics (container=""), each container's cgroup, and the pod's network namespace.
Values are UInt64 in CRI: CPU time is in whole seconds, as CRI-O sends it.
"""

from __future__ import annotations

import asyncio

from typing import cast

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.server.batches import batches
from cri.context import Runtime

COUNTER, GAUGE = api_pb2.COUNTER, api_pb2.GAUGE
BASE_LABELS = ["container", "pod", "namespace", "image", "id", "name"]

# name -> (help, type, extra label keys)
DESCRIPTORS: dict[str, tuple[str, int, list[str]]] = {
    "container_cpu_usage_seconds_total": ("Cumulative CPU time consumed in seconds.", COUNTER, []),
    "container_memory_usage_bytes": ("Current memory usage in bytes, including all memory regardless of when it "
                                     "was accessed.", GAUGE, []),
    "container_memory_working_set_bytes": ("Current working set in bytes.", GAUGE, []),
    "container_memory_rss": ("Size of RSS in bytes.", GAUGE, []),
    "container_memory_failures_total": ("Cumulative count of memory allocation failures.", COUNTER,
                                        ["failure_type", "scope"]),
    "container_spec_memory_limit_bytes": ("Memory limit for the container in bytes.", GAUGE, []),
    "container_threads": ("Number of threads running inside the container.", GAUGE, []),
    "container_fs_usage_bytes": ("Number of bytes consumed by the container's writable layer.", GAUGE, []),
    "container_fs_inodes_used": ("Number of inodes used by the container's writable layer.", GAUGE, []),
    "container_network_receive_bytes_total": ("Cumulative count of bytes received.", COUNTER, ["interface"]),
    "container_network_receive_packets_total": ("Cumulative count of packets received.", COUNTER, ["interface"]),
    "container_network_receive_packets_dropped_total": ("Cumulative count of packets dropped while receiving.",
                                                        COUNTER, ["interface"]),
    "container_network_receive_errors_total": ("Cumulative count of errors encountered while receiving.",
                                               COUNTER, ["interface"]),
    "container_network_transmit_bytes_total": ("Cumulative count of bytes transmitted.", COUNTER, ["interface"]),
    "container_network_transmit_packets_total": ("Cumulative count of packets transmitted.", COUNTER,
                                                 ["interface"]),
    "container_network_transmit_packets_dropped_total": ("Cumulative count of packets dropped while transmitting.",
                                                         COUNTER, ["interface"]),
    "container_network_transmit_errors_total": ("Cumulative count of errors encountered while transmitting.",
                                                COUNTER, ["interface"]),
}


def _metric(name: str, timestamp: int, labels: list[str], value: int | None, *extra: str) -> api_pb2.Metric | None:
    if value is None:
        return None
    return api_pb2.Metric(name=name, timestamp=timestamp, metric_type=cast(api_pb2.MetricType, DESCRIPTORS[name][1]),
                          label_values=[*labels, *extra], value=api_pb2.UInt64Value(value=max(0, int(value))))


def _cgroup_metrics(sample, labels: list[str]) -> list[api_pb2.Metric]:
    t = sample.timestamp_ns
    cpu_seconds = sample.cpu_usage_ns // 1_000_000_000 if sample.cpu_usage_ns is not None else None
    out = [
        _metric("container_cpu_usage_seconds_total", t, labels, cpu_seconds),
        _metric("container_memory_usage_bytes", t, labels, sample.memory_usage),
        _metric("container_memory_working_set_bytes", t, labels, sample.memory_working_set),
        _metric("container_memory_rss", t, labels, sample.memory_rss),
        _metric("container_memory_failures_total", t, labels, sample.page_faults, "pgfault", "container"),
        _metric("container_memory_failures_total", t, labels, sample.major_page_faults, "pgmajfault", "container"),
        _metric("container_spec_memory_limit_bytes", t, labels, sample.memory_limit),
        _metric("container_threads", t, labels, sample.pids),
    ]
    return [m for m in out if m is not None]


def _network_metrics(interfaces, timestamp: int, labels: list[str]) -> list[api_pb2.Metric]:
    out = []
    for i in interfaces:
        for name, value in (("receive_bytes", i.rx_bytes), ("receive_packets", i.rx_packets),
                            ("receive_packets_dropped", i.rx_dropped), ("receive_errors", i.rx_errors),
                            ("transmit_bytes", i.tx_bytes), ("transmit_packets", i.tx_packets),
                            ("transmit_packets_dropped", i.tx_dropped), ("transmit_errors", i.tx_errors)):
            out.append(_metric(f"container_network_{name}_total", timestamp, labels, value, i.name))
    return [m for m in out if m is not None]


async def _pod_metrics(rt: Runtime, sandbox) -> api_pb2.PodSandboxMetrics:
    stats = await rt.containers.sandbox_stats(sandbox)
    pod_labels = ["", sandbox.name, sandbox.namespace, "", sandbox.id, ""]
    metrics = _cgroup_metrics(stats.cgroup, pod_labels)
    metrics += _network_metrics(stats.network, stats.cgroup.timestamp_ns, pod_labels)
    containers = []
    for c in stats.containers:
        r = c.record
        labels = [r.name, sandbox.name, sandbox.namespace, r.image_ref or r.image, r.id, r.name]
        own = _cgroup_metrics(c.cgroup, labels)
        own += [m for m in (_metric("container_fs_usage_bytes", c.cgroup.timestamp_ns, labels, c.writable_bytes),
                            _metric("container_fs_inodes_used", c.cgroup.timestamp_ns, labels, c.writable_inodes))
                if m is not None]
        containers.append(api_pb2.ContainerMetrics(container_id=r.id, metrics=own))
    return api_pb2.PodSandboxMetrics(pod_sandbox_id=sandbox.id, metrics=metrics, container_metrics=containers)


async def _all_pod_metrics(rt) -> list[api_pb2.PodSandboxMetrics]:
    return list(await asyncio.gather(*(_pod_metrics(rt, s) for s in rt.sandboxes.list(state="ready"))))


async def list_metric_descriptors(rt: Runtime, request: api_pb2.ListMetricDescriptorsRequest,
                                  context: grpc.aio.ServicerContext) -> api_pb2.ListMetricDescriptorsResponse:
    return api_pb2.ListMetricDescriptorsResponse(descriptors=[
        api_pb2.MetricDescriptor(name=name, help=help_text, label_keys=[*BASE_LABELS, *extra])
        for name, (help_text, _, extra) in DESCRIPTORS.items()])


async def list_pod_sandbox_metrics(rt: Runtime, request: api_pb2.ListPodSandboxMetricsRequest,
                                   context: grpc.aio.ServicerContext) -> api_pb2.ListPodSandboxMetricsResponse:
    return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=await _all_pod_metrics(rt))


async def stream_pod_sandbox_metrics(
        rt: Runtime, request: api_pb2.StreamPodSandboxMetricsRequest,
        context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
    for batch in batches(await _all_pod_metrics(rt)):
        yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)


HANDLERS = {
    "ListMetricDescriptors": list_metric_descriptors,
    "ListPodSandboxMetrics": list_pod_sandbox_metrics,
    "StreamPodSandboxMetrics": stream_pod_sandbox_metrics,
}
