"""ExecSync: run a command to completion; its timeout kills the command, and the output is capped."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import DeadlineExceeded, InvalidArgument
from cri.context import Runtime


async def exec_sync(rt: Runtime, request: api_pb2.ExecSyncRequest,
                    context: grpc.aio.ServicerContext) -> api_pb2.ExecSyncResponse:
    if not request.container_id:
        raise InvalidArgument("ContainerId must not be empty")
    result = await rt.containers.exec_sync(request.container_id, list(request.cmd), request.timeout)
    if result.timed_out:
        raise DeadlineExceeded(f"command {list(request.cmd)!r} timed out after {request.timeout}s and was killed")
    return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)


HANDLERS = {"ExecSync": exec_sync}
