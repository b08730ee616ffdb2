"""ListContainers and StreamContainers with their filters: id prefix, state, sandbox id, labels."""

from cri.api.v1 import api_pb2

from cri.server.batches import batches
from cri.server.container_convert import container_message


def _containers(rt, f: api_pb2.ContainerFilter) -> list[api_pb2.Container]:
    records = rt.containers.list(
        id_prefix=f.id, state=f.state.state if f.HasField("state") else None, sandbox_id=f.pod_sandbox_id,
        labels=dict(f.label_selector))
    return [container_message(r) for r in records]


async def list_containers(rt, request, context):
    return api_pb2.ListContainersResponse(containers=_containers(rt, request.filter))


async def stream_containers(rt, request, context):
    for batch in batches(_containers(rt, request.filter)):
        yield api_pb2.StreamContainersResponse(containers=batch)


HANDLERS = {"ListContainers": list_containers, "StreamContainers": stream_containers}
