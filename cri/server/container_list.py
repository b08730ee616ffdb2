"""ListContainers with its filters: id prefix, state, sandbox id, labels."""

from cri.api.v1 import api_pb2

from cri.server.container_convert import container_message


async def list_containers(rt, request, context):
    f = request.filter
    records = rt.containers.list(
        id_prefix=f.id, state=f.state.state if f.HasField("state") else None, sandbox_id=f.pod_sandbox_id,
        labels=dict(f.label_selector))
    return api_pb2.ListContainersResponse(containers=[container_message(r) for r in records])


HANDLERS = {"ListContainers": list_containers}
