"""ReopenContainerLog: kubelet rotated the file; conmon reopens it (running containers only)."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument


async def reopen_container_log(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    await rt.containers.reopen_log(request.container_id)
    return api_pb2.ReopenContainerLogResponse()


HANDLERS = {"ReopenContainerLog": reopen_container_log}
