"""StopContainer: stop signal, SIGKILL after the timeout; idempotent, and an unknown id is not an error."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def stop_container(rt: Runtime, request: api_pb2.StopContainerRequest,
                         context: grpc.aio.ServicerContext) -> api_pb2.StopContainerResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.stop_container(request.container_id, max(0, request.timeout))
    return api_pb2.StopContainerResponse()


HANDLERS = {"StopContainer": stop_container}
