"""ContainerStatus, with the runtime's view as JSON when verbose; the plain answer is kept serialized
(cri/server/answers.py)."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def container_status(rt: Runtime, request: api_pb2.ContainerStatusRequest,
                           context: grpc.aio.ServicerContext) -> api_pb2.ContainerStatusResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    record = rt.containers.get(request.container_id)
    body = rt.answers.container_status.get(record)
    if request.verbose:
        body += api_pb2.ContainerStatusResponse(info=rt.containers.verbose_info(record)).SerializeToString()
    return body


HANDLERS = {"ContainerStatus": container_status}
