"""ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats from the cgroups."""

import asyncio

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_convert import cpu_message, memory_message, stats_message


async def container_stats(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    return api_pb2.ContainerStatsResponse(stats=stats_message(await rt.containers.stats(request.container_id)))


async def list_container_stats(rt, request, context):
    f = request.filter
    stats = await rt.containers.list_stats(id_prefix=f.id, sandbox_id=f.pod_sandbox_id,
                                           labels=dict(f.label_selector))
    return api_pb2.ListContainerStatsResponse(stats=[stats_message(s) for s in stats])


def _interface(i) -> api_pb2.NetworkInterfaceUsage:
    return api_pb2.NetworkInterfaceUsage(
        name=i.name, rx_bytes=api_pb2.UInt64Value(value=i.rx_bytes), rx_errors=api_pb2.UInt64Value(value=i.rx_errors),
        tx_bytes=api_pb2.UInt64Value(value=i.tx_bytes), tx_errors=api_pb2.UInt64Value(value=i.tx_errors))


async def _pod_stats(rt, sandbox) -> api_pb2.PodSandboxStats:
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
            process=api_pb2.ProcessUsage(timestamp=sample.timestamp_ns,
                                         process_count=api_pb2.UInt64Value(value=sample.pids or 0)),
            containers=[stats_message(s) for s in stats.containers]))


async def pod_sandbox_stats(rt, request, context):
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    return api_pb2.PodSandboxStatsResponse(stats=await _pod_stats(rt, rt.sandboxes.get(request.pod_sandbox_id)))


async def list_pod_sandbox_stats(rt, request, context):
    f = request.filter
    sandboxes = rt.sandboxes.list(id_prefix=f.id, state="ready", labels=dict(f.label_selector))
    stats = await asyncio.gather(*(_pod_stats(rt, s) for s in sandboxes))
    return api_pb2.ListPodSandboxStatsResponse(stats=list(stats))


HANDLERS = {
    "ContainerStats": container_stats,
    "ListContainerStats": list_container_stats,
    "PodSandboxStats": pod_sandbox_stats,
    "ListPodSandboxStats": list_pod_sandbox_stats,
}
