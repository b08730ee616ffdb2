"""PodSandboxStatus: state, IPs, namespace options and, when verbose, the runtime's view as JSON. The answer
is kept serialized (cri/server/answers.py) and gets the time of each call appended."""

import json

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def pod_sandbox_status(rt: Runtime, request: api_pb2.PodSandboxStatusRequest,
                             context: grpc.aio.ServicerContext) -> api_pb2.PodSandboxStatusResponse | bytes:
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    if not request.verbose:
        return rt.answers.sandbox_status_now(rt.sandboxes.current(request.pod_sandbox_id))
    status = rt.sandboxes.status(request.pod_sandbox_id)
    info = api_pb2.PodSandboxStatusResponse(info={"info": json.dumps(status.info)}).SerializeToString()
    return rt.answers.sandbox_status_now(status.record) + info


HANDLERS = {"PodSandboxStatus": pod_sandbox_status}
