"""Exec: validate, then hand back a single-use streaming URL; the command runs when the client connects."""

from cri.api.v1 import api_pb2

from cri.errors import FailedPrecondition, InvalidArgument, Unavailable
from cri.state.container_state import ContainerState
from cri.streaming.backend import ExecRequest


def check_streams(request) -> None:
    """What kubelet's own validation refuses for exec and attach."""
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


def running_container_id(rt, ref: str) -> str:
    record = rt.containers.get(ref)
    if record.state != ContainerState.RUNNING:
        raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
    if rt.streaming is None:
        raise Unavailable("the streaming server is not running")
    return record.id


async def exec_(rt, request, context):
    check_streams(request)
    if not request.cmd:
        raise InvalidArgument("cmd must not be empty")
    container_id = running_container_id(rt, request.container_id)
    url = rt.streaming.url_for_exec(ExecRequest(container_id, tuple(request.cmd), request.tty, request.stdin,
                                                request.stdout, request.stderr))
    return api_pb2.ExecResponse(url=url)


HANDLERS = {"Exec": exec_}
