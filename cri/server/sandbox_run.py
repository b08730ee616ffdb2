"""RunPodSandbox."""

import grpc
from cri.api.v1 import api_pb2

from cri.server.sandbox_convert import spec_from_request
from cri.context import Runtime


async def run_pod_sandbox(rt: Runtime, request: api_pb2.RunPodSandboxRequest,
                          context: grpc.aio.ServicerContext) -> api_pb2.RunPodSandboxResponse:
    record = await rt.sandboxes.run_pod(spec_from_request(request))
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=record.id)


def keep_abandoned(rt: Runtime, request: api_pb2.RunPodSandboxRequest) -> None:
    rt.sandboxes.mark_abandoned(spec_from_request(request))


HANDLERS = {"RunPodSandbox": run_pod_sandbox}
ABANDONED = {"RunPodSandbox": keep_abandoned}
