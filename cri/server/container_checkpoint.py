"""CheckpointContainer: kubelet's forensic checkpoint (POST /checkpoint on its API) of a running container."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument


async def checkpoint_container(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.checkpoint(request.container_id, request.location, float(request.timeout))
    return api_pb2.CheckpointContainerResponse()


HANDLERS = {"CheckpointContainer": checkpoint_container}
