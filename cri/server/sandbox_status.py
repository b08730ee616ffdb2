"""PodSandboxStatus: state, IPs, namespace options and, when verbose, the runtime's view as JSON."""

import json
import time

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.sandbox_convert import STATE_TO_CRI, metadata, namespace_option


async def pod_sandbox_status(rt, request, context):
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    status = rt.sandboxes.status(request.pod_sandbox_id)
    record = status.record
    ips = record.ips
    network = api_pb2.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[api_pb2.PodIP(ip=ip) for ip in ips[1:]])
    response = api_pb2.PodSandboxStatusResponse(
        status=api_pb2.PodSandboxStatus(
            id=record.id, metadata=metadata(record), state=STATE_TO_CRI.get(record.state, api_pb2.SANDBOX_NOTREADY),
            created_at=record.created_at, network=network,
            linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=namespace_option(record))),
            labels=record.labels, annotations=record.annotations, runtime_handler=record.reported_handler),
        timestamp=time.time_ns())
    if request.verbose:
        response.info["info"] = json.dumps(status.info)
    return response


HANDLERS = {"PodSandboxStatus": pod_sandbox_status}
