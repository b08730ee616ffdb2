"""PortForward: a single-use streaming URL; each connection then reaches a port inside the pod's netns."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument, Unavailable
from cri.streaming.backend import PortForwardRequest


async def port_forward(rt, request, context):
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    bad = [p for p in request.port if not 0 < p < 65536]
    if bad:
        raise InvalidArgument(f"ports out of range: {bad}")
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    if rt.streaming is None:
        raise Unavailable("the streaming server is not running")
    url = rt.streaming.url_for_port_forward(PortForwardRequest(sandbox.id, tuple(request.port)))
    return api_pb2.PortForwardResponse(url=url)


HANDLERS = {"PortForward": port_forward}
