"""ContainerStatus, with the runtime's view as JSON when verbose."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_convert import status_message


async def container_status(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    record = rt.containers.get(request.container_id)
    response = api_pb2.ContainerStatusResponse(status=status_message(record))
    if request.verbose:
        response.info.update(rt.containers.verbose_info(record))
    return response


HANDLERS = {"ContainerStatus": container_status}
