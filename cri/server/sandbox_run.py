"""RunPodSandbox."""

from cri.api.v1 import api_pb2

from cri.server.sandbox_convert import spec_from_request


async def run_pod_sandbox(rt, request, context):
    record = await rt.sandboxes.run_pod(spec_from_request(request))
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=record.id)


def keep_abandoned(rt, request) -> None:
    rt.sandboxes.mark_abandoned(spec_from_request(request))


HANDLERS = {"RunPodSandbox": run_pod_sandbox}
ABANDONED = {"RunPodSandbox": keep_abandoned}
