"""ExecSync: run a command to completion; its timeout kills the command, and the output is capped."""

from cri.api.v1 import api_pb2

from cri.errors import DeadlineExceeded, InvalidArgument


async def exec_sync(rt, request, context):
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    result = await rt.containers.exec_sync(request.container_id, list(request.cmd), request.timeout)
    if result.timed_out:
        raise DeadlineExceeded(f"command {list(request.cmd)!r} timed out after {request.timeout}s and was killed")
    return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)


HANDLERS = {"ExecSync": exec_sync}
