"""ContainerStats, PodSandboxStats and their List*/Stream* twins, from the cgroups."""

import asyncio

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.batches import batches
from cri.server.container_convert import cpu_message, io_message, memory_message, stats_message
from cri.context import Runtime


async def container_stats(rt: Runtime, request: api_pb2.ContainerStatsRequest,
                          context: grpc.aio.ServicerContext) -> api_pb2.ContainerStatsResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    return api_pb2.ContainerStatsResponse(stats=stats_message(await rt.containers.stats(request.container_id)))


async def _container_stats(rt: Runtime, f: api_pb2.ContainerStatsFilter) -> list[api_pb2.ContainerStats]:
    stats = await rt.containers.list_stats(id_prefix=f.id, sandbox_id=f.pod_sandbox_id,
                                           labels=dict(f.label_selector))
    return [stats_message(s) for s in stats]


async def list_container_stats(rt: Runtime, request: api_pb2.ListContainerStatsRequest,
                               context: grpc.aio.ServicerContext) -> api_pb2.ListContainerStatsResponse:
    return api_pb2.ListContainerStatsResponse(stats=await _container_stats(rt, request.filter))


async def stream_container_stats(
        rt: Runtime, request: api_pb2.StreamContainerStatsRequest,
        context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
    for batch in batches(await _container_stats(rt, request.filter)):
        yield api_pb2.StreamContainerStatsResponse(container_stats=batch)


def _interface(i) -> api_pb2.NetworkInterfaceUsage:
    return api_pb2.NetworkInterfaceUsage(
        name=i.name, rx_bytes=api_pb2.UInt64Value(value=i.rx_bytes), rx_errors=api_pb2.UInt64Value(value=i.rx_errors),
        tx_bytes=api_pb2.UInt64Value(value=i.tx_bytes), tx_errors=api_pb2.UInt64Value(value=i.tx_errors))


async def _pod_stats(rt: Runtime, sandbox) -> api_pb2.PodSandboxStats:
    stats = await rt.containers.sandbox_stats(sandbox)
    sample = stats.cgroup
    network = None
    if stats.network:
        default = next((i for i in stats.network if i.name == "eth0"), stats.network[0])
        network = api_pb2.NetworkUsage(timestamp=sample.timestamp_ns, default_interface=_interface(default),
                                       interfaces=[_interface(i) for i in stats.network if i is not default])
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=sandbox.id, metadata=api_pb2.PodSandboxMetadata(name=sandbox.name, uid=sandbox.uid,
                                                               namespace=sandbox.namespace, attempt=sandbox.attempt),
            labels=sandbox.labels, annotations=sandbox.annotations),
        linux=api_pb2.LinuxPodSandboxStats(
            cpu=cpu_message(sample, stats.usage_nano_cores), memory=memory_message(sample), network=network,
            io=io_message(sample),
            process=api_pb2.ProcessUsage(timestamp=sample.timestamp_ns,
                                         process_count=api_pb2.UInt64Value(value=sample.pids or 0)),
            containers=[stats_message(s) for s in stats.containers]))


async def pod_sandbox_stats(rt: Runtime, request: api_pb2.PodSandboxStatsRequest,
                            context: grpc.aio.ServicerContext) -> api_pb2.PodSandboxStatsResponse:
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    return api_pb2.PodSandboxStatsResponse(stats=await _pod_stats(rt, rt.sandboxes.get(request.pod_sandbox_id)))


async def _pods_stats(rt: Runtime, f: api_pb2.PodSandboxStatsFilter) -> list[api_pb2.PodSandboxStats]:
    sandboxes = rt.sandboxes.list(id_prefix=f.id, state="ready", labels=dict(f.label_selector))
    return list(await asyncio.gather(*(_pod_stats(rt, s) for s in sandboxes)))


async def list_pod_sandbox_stats(rt: Runtime, request: api_pb2.ListPodSandboxStatsRequest,
                                 context: grpc.aio.ServicerContext) -> api_pb2.ListPodSandboxStatsResponse:
    return api_pb2.ListPodSandboxStatsResponse(stats=await _pods_stats(rt, request.filter))


async def stream_pod_sandbox_stats(
        rt: Runtime, request: api_pb2.StreamPodSandboxStatsRequest,
        context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
    for batch in batches(await _pods_stats(rt, request.filter)):
        yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)


HANDLERS = {
    "ContainerStats": container_stats,
    "ListContainerStats": list_container_stats,
    "PodSandboxStats": pod_sandbox_stats,
    "ListPodSandboxStats": list_pod_sandbox_stats,
    "StreamContainerStats": stream_container_stats,
    "StreamPodSandboxStats": stream_pod_sandbox_stats,
}
