"""CheckpointContainer: kubelet's forensic checkpoint (POST /checkpoint on its API) of a running container."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def checkpoint_container(rt: Runtime, request: api_pb2.CheckpointContainerRequest,
                               context: grpc.aio.ServicerContext) -> api_pb2.CheckpointContainerResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.checkpoint(request.container_id, request.location, float(request.timeout))
    return api_pb2.CheckpointContainerResponse()


HANDLERS = {"CheckpointContainer": checkpoint_container}
