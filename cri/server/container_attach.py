"""Attach: validate, then hand back a single-use streaming URL to conmon's attach socket."""

from cri.api.v1 import api_pb2

from cri.server.container_exec import check_streams, running_container_id
from cri.streaming.backend import AttachRequest


async def attach(rt, request, context):
    check_streams(request)
    container_id = running_container_id(rt, request.container_id)
    url = rt.streaming.url_for_attach(AttachRequest(container_id, request.tty, request.stdin, request.stdout,
                                                    request.stderr))
    return api_pb2.AttachResponse(url=url)


HANDLERS = {"Attach": attach}
