"""StartContainer: only a created container can start."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument


async def start_container(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.start_container(request.container_id)
    return api_pb2.StartContainerResponse()


HANDLERS = {"StartContainer": start_container}
