"""CreateContainer: validate and convert the request; the manager builds the spec and runs conmon."""

import grpc
from cri.api.v1 import api_pb2

from cri.server.container_convert import request_from_proto
from cri.context import Runtime


async def create_container(rt: Runtime, request: api_pb2.CreateContainerRequest,
                           context: grpc.aio.ServicerContext) -> api_pb2.CreateContainerResponse:
    record = await rt.containers.create(request_from_proto(request))
    return api_pb2.CreateContainerResponse(container_id=record.id)


def keep_abandoned(rt: Runtime, request: api_pb2.CreateContainerRequest) -> None:
    rt.containers.mark_abandoned(request_from_proto(request))


HANDLERS = {"CreateContainer": create_container}
ABANDONED = {"CreateContainer": keep_abandoned}
