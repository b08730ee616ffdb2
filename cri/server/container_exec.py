"""Exec: validate, then hand back a single-use streaming URL; the command runs when the client connects."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import FailedPrecondition, InvalidArgument, Unavailable
from cri.state.container_state import ContainerState
from cri.streaming.backend import ExecRequest
from cri.streaming.server import StreamingServer
from cri.context import Runtime


def check_streams(request) -> None:
    """What kubelet's own validation refuses for exec and attach."""
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


def streaming_server(rt: Runtime) -> StreamingServer:
    if rt.streaming is None:
        raise Unavailable("the streaming server is not running")
    return rt.streaming


def running_container_id(rt: Runtime, ref: str) -> str:
    record = rt.containers.get(ref)
    if record.state != ContainerState.RUNNING:
        raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
    streaming_server(rt)
    return record.id


async def exec_(rt: Runtime, request: api_pb2.ExecRequest, context: grpc.aio.ServicerContext) -> api_pb2.ExecResponse:
    check_streams(request)
    if not request.cmd:
        raise InvalidArgument("cmd must not be empty")
    container_id = running_container_id(rt, request.container_id)
    url = streaming_server(rt).url_for_exec(ExecRequest(container_id, tuple(request.cmd), request.tty, request.stdin,
                                                request.stdout, request.stderr))
    return api_pb2.ExecResponse(url=url)


HANDLERS = {"Exec": exec_}
