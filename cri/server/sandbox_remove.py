"""RemovePodSandbox: an unknown id is not an error (kubelet and critest rely on that)."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def remove_pod_sandbox(rt: Runtime, request: api_pb2.RemovePodSandboxRequest,
                             context: grpc.aio.ServicerContext) -> api_pb2.RemovePodSandboxResponse:
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    await rt.sandboxes.remove_pod(request.pod_sandbox_id)
    return api_pb2.RemovePodSandboxResponse()


HANDLERS = {"RemovePodSandbox": remove_pod_sandbox}
