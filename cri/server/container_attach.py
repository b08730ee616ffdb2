"""Attach: validate, then hand back a single-use streaming URL to conmon's attach socket."""

import grpc
from cri.api.v1 import api_pb2

from cri.server.container_exec import check_streams, running_container_id, streaming_server
from cri.streaming.backend import AttachRequest
from cri.context import Runtime


async def attach(rt: Runtime, request: api_pb2.AttachRequest,
                 context: grpc.aio.ServicerContext) -> api_pb2.AttachResponse:
    check_streams(request)
    container_id = running_container_id(rt, request.container_id)
    url = streaming_server(rt).url_for_attach(AttachRequest(container_id, request.tty, request.stdin,
                                                            request.stdout, request.stderr))
    return api_pb2.AttachResponse(url=url)


HANDLERS = {"Attach": attach}
