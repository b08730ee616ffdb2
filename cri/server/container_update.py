"""UpdateContainerResources: new cgroup limits for a live container through the runtime's update."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_convert import resources_from_proto
from cri.context import Runtime


async def update_container_resources(rt: Runtime, request: api_pb2.UpdateContainerResourcesRequest,
                                     context: grpc.aio.ServicerContext) -> api_pb2.UpdateContainerResourcesResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.update_resources(request.container_id, resources_from_proto(request.linux))
    return api_pb2.UpdateContainerResourcesResponse()


HANDLERS = {"UpdateContainerResources": update_container_resources}
