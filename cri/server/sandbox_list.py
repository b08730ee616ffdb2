"""ListPodSandbox and StreamPodSandboxes with the id-prefix, state and label-selector filters."""

from cri.api.v1 import api_pb2

from cri.server.batches import batches
from cri.server.sandbox_convert import STATE_FROM_CRI, STATE_TO_CRI, metadata


def _sandboxes(rt, f: api_pb2.PodSandboxFilter) -> list[api_pb2.PodSandbox]:
    state = STATE_FROM_CRI.get(f.state.state) if f.HasField("state") else None
    records = rt.sandboxes.list(id_prefix=f.id, state=state, labels=dict(f.label_selector))
    return [api_pb2.PodSandbox(id=r.id, metadata=metadata(r), state=STATE_TO_CRI.get(r.state, api_pb2.SANDBOX_NOTREADY),
                               created_at=r.created_at, labels=r.labels, annotations=r.annotations,
                               runtime_handler=r.reported_handler)
            for r in records]


async def list_pod_sandbox(rt, request, context):
    return api_pb2.ListPodSandboxResponse(items=_sandboxes(rt, request.filter))


async def stream_pod_sandboxes(rt, request, context):
    for batch in batches(_sandboxes(rt, request.filter)):
        yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=batch)


HANDLERS = {"ListPodSandbox": list_pod_sandbox, "StreamPodSandboxes": stream_pod_sandboxes}
