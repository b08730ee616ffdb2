"""RemoveContainer: kills a running container first; an unknown id is not an error."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def remove_container(rt: Runtime, request: api_pb2.RemoveContainerRequest,
                           context: grpc.aio.ServicerContext) -> api_pb2.RemoveContainerResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.remove_container(request.container_id)
    return api_pb2.RemoveContainerResponse()


HANDLERS = {"RemoveContainer": remove_container}
