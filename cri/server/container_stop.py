"""StopContainer: stop signal, SIGKILL after the timeout; idempotent, and an unknown id is not an error."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument


async def stop_container(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.stop_container(request.container_id, max(0, request.timeout))
    return api_pb2.StopContainerResponse()


HANDLERS = {"StopContainer": stop_container}
