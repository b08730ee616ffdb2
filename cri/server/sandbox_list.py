"""ListPodSandbox and StreamPodSandboxes with the id-prefix, state and label-selector filters. ListPodSandbox
joins each pod's entry, kept serialized (cri/server/answers.py)."""

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.server.batches import batches
from cri.server.sandbox_convert import STATE_FROM_CRI, sandbox_message
from cri.context import Runtime


def _records(rt: Runtime, f: api_pb2.PodSandboxFilter) -> list:
    state = STATE_FROM_CRI.get(f.state.state) if f.HasField("state") else None
    return rt.sandboxes.list(id_prefix=f.id, state=state, labels=dict(f.label_selector))


async def list_pod_sandbox(rt: Runtime, request: api_pb2.ListPodSandboxRequest,
                           context: grpc.aio.ServicerContext) -> api_pb2.ListPodSandboxResponse | bytes:
    item = rt.answers.sandbox_item.get
    return b"".join([item(r) for r in _records(rt, request.filter)])


async def stream_pod_sandboxes(rt: Runtime, request: api_pb2.StreamPodSandboxesRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
    for batch in batches([sandbox_message(r) for r in _records(rt, request.filter)]):
        yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=batch)


HANDLERS = {"ListPodSandbox": list_pod_sandbox, "StreamPodSandboxes": stream_pod_sandboxes}
