"""GetContainerEvents: a server stream of created, started, stopped and deleted events (kubelet's evented PLEG)."""

from cri.api.v1 import api_pb2

from cri.server.container_convert import status_message


def _pod_status(rt, sandbox_id: str) -> api_pb2.PodSandboxStatus | None:
    sandbox = rt.sandboxes.find(sandbox_id)
    if sandbox is None:
        return None
    return api_pb2.PodSandboxStatus(
        id=sandbox.id, metadata=api_pb2.PodSandboxMetadata(name=sandbox.name, uid=sandbox.uid,
                                                           namespace=sandbox.namespace, attempt=sandbox.attempt),
        created_at=sandbox.created_at, labels=sandbox.labels, annotations=sandbox.annotations,
        runtime_handler=sandbox.reported_handler,
        state=api_pb2.SANDBOX_READY if sandbox.state == "ready" else api_pb2.SANDBOX_NOTREADY)


async def get_container_events(rt, request, context):
    queue = rt.events.subscribe()
    try:
        while True:
            event = await queue.get()
            if event is None:  # we fell behind and were dropped: end the stream, the client re-lists
                return
            statuses = [status_message(r) for r in rt.containers.list(sandbox_id=event.sandbox_id)]
            yield api_pb2.ContainerEventResponse(
                container_id=event.container_id, container_event_type=event.kind, created_at=event.timestamp_ns,
                pod_sandbox_status=_pod_status(rt, event.sandbox_id), containers_statuses=statuses)
    finally:
        rt.events.unsubscribe(queue)


HANDLERS = {"GetContainerEvents": get_container_events}
