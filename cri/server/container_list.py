"""ListContainers and StreamContainers with their filters: id prefix, state, sandbox id, labels. ListContainers
joins each container's entry, kept serialized (cri/server/answers.py)."""

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.server.batches import batches
from cri.server.container_convert import container_message
from cri.context import Runtime


def _records(rt: Runtime, f: api_pb2.ContainerFilter) -> list:
    return rt.containers.list(
        id_prefix=f.id, state=f.state.state if f.HasField("state") else None, sandbox_id=f.pod_sandbox_id,
        labels=dict(f.label_selector))


async def list_containers(rt: Runtime, request: api_pb2.ListContainersRequest,
                          context: grpc.aio.ServicerContext) -> api_pb2.ListContainersResponse | bytes:
    item = rt.answers.container_item.get
    return b"".join([item(r) for r in _records(rt, request.filter)])


async def stream_containers(rt: Runtime, request: api_pb2.StreamContainersRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamContainersResponse]:
    for batch in batches([container_message(r) for r in _records(rt, request.filter)]):
        yield api_pb2.StreamContainersResponse(containers=batch)


HANDLERS = {"ListContainers": list_containers, "StreamContainers": stream_containers}
