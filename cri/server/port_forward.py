"""PortForward: a single-use streaming URL; each connection then reaches a port inside the pod's netns."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_exec import streaming_server
from cri.streaming.backend import PortForwardRequest
from cri.context import Runtime


async def port_forward(rt: Runtime, request: api_pb2.PortForwardRequest,
                       context: grpc.aio.ServicerContext) -> api_pb2.PortForwardResponse:
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    bad = [p for p in request.port if not 0 < p < 65536]
    if bad:
        raise InvalidArgument(f"ports out of range: {bad}")
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    url = streaming_server(rt).url_for_port_forward(PortForwardRequest(sandbox.id, tuple(request.port)))
    return api_pb2.PortForwardResponse(url=url)


HANDLERS = {"PortForward": port_forward}
