"""ListPodSandbox with the id-prefix, state and label-selector filters."""

from cri.api.v1 import api_pb2

from cri.server.sandbox_convert import STATE_FROM_CRI, STATE_TO_CRI, metadata


async def list_pod_sandbox(rt, request, context):
    f = request.filter
    state = STATE_FROM_CRI.get(f.state.state) if f.HasField("state") else None
    records = rt.sandboxes.list(id_prefix=f.id, state=state, labels=dict(f.label_selector))
    return api_pb2.ListPodSandboxResponse(items=[
        api_pb2.PodSandbox(id=r.id, metadata=metadata(r), state=STATE_TO_CRI.get(r.state, api_pb2.SANDBOX_NOTREADY),
                           created_at=r.created_at, labels=r.labels, annotations=r.annotations,
                           runtime_handler=r.reported_handler)
        for r in records])


HANDLERS = {"ListPodSandbox": list_pod_sandbox}
