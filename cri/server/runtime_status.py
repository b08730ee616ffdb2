"""Status: the RuntimeReady and NetworkReady conditions kubelet gates the node on."""

import json

from cri_api.v1 import api_pb2


def _condition(kind: str, ready: bool, reason: str, message: str) -> api_pb2.RuntimeCondition:
    return api_pb2.RuntimeCondition(type=kind, status=ready, reason="" if ready else reason,
                                    message="" if ready else message)


async def status(rt, request, context):
    runtime_ready, runtime_reason, runtime_message = rt.runtime_condition()
    network_ready, network_reason, network_message = rt.network_condition()
    response = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=[
            _condition("RuntimeReady", runtime_ready, runtime_reason, runtime_message),
            _condition("NetworkReady", network_ready, network_reason, network_message),
        ])
    )
    for name in rt.config.runtime.handlers:
        response.runtime_handlers.add(name=name)
    if request.verbose:
        response.info["config"] = rt.config.model_dump_json()
        response.info["podCIDR"] = json.dumps(rt.pod_cidr)
    return response


HANDLERS = {"Status": status}
