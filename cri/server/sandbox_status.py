"""PodSandboxStatus: state, IPs, namespace options and, when verbose, the runtime's view as JSON."""

import json
import time

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.sandbox_convert import status_message


async def pod_sandbox_status(rt, request, context):
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    status = rt.sandboxes.status(request.pod_sandbox_id)
    response = api_pb2.PodSandboxStatusResponse(status=status_message(status.record), timestamp=time.time_ns())
    if request.verbose:
        response.info["info"] = json.dumps(status.info)
    return response


HANDLERS = {"PodSandboxStatus": pod_sandbox_status}
