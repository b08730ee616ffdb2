"""ReopenContainerLog: kubelet rotated the file; conmon reopens it (running containers only)."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def reopen_container_log(rt: Runtime, request: api_pb2.ReopenContainerLogRequest,
                               context: grpc.aio.ServicerContext) -> api_pb2.ReopenContainerLogResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.reopen_log(request.container_id)
    return api_pb2.ReopenContainerLogResponse()


HANDLERS = {"ReopenContainerLog": reopen_container_log}
