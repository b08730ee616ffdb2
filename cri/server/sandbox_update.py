"""UpdatePodSandboxResources: in-place pod-level resize (cri/core/sandboxes/resources.py)."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_convert import resources_from_proto
from cri.context import Runtime


async def update_pod_sandbox_resources(rt: Runtime, request: api_pb2.UpdatePodSandboxResourcesRequest,
                                       context: grpc.aio.ServicerContext) -> api_pb2.UpdatePodSandboxResourcesResponse:
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    for name in ("resources", "overhead"):
        r = getattr(request, name)
        if r.memory_limit_in_bytes < 0 or r.cpu_shares < 0 or r.cpu_period < 0:
            raise InvalidArgument(f"{name}: memory_limit_in_bytes, cpu_shares and cpu_period must not be negative")
    await rt.sandboxes.update_resources(request.pod_sandbox_id, resources_from_proto(request.resources),
                                        resources_from_proto(request.overhead))
    return api_pb2.UpdatePodSandboxResourcesResponse()


HANDLERS = {"UpdatePodSandboxResources": update_pod_sandbox_resources}
