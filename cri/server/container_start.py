"""StartContainer: only a created container can start."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def start_container(rt: Runtime, request: api_pb2.StartContainerRequest,
                          context: grpc.aio.ServicerContext) -> api_pb2.StartContainerResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.start_container(request.container_id)
    return api_pb2.StartContainerResponse()


HANDLERS = {"StartContainer": start_container}
