"""GetContainerEvents: a server stream of created, started, stopped and deleted events (kubelet's evented PLEG),
for containers and for pod sandboxes (whose events name the sandbox id as the container id)."""

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.server.container_convert import status_message
from cri.server import sandbox_convert
from cri.context import Runtime


async def get_container_events(rt: Runtime, request: api_pb2.GetEventsRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    queue = rt.events.subscribe()
    try:
        await context.send_initial_metadata(())  # the client may wait for it: from here on it misses nothing
        while True:
            event = await queue.get()
            if event is None:  # we fell behind and were dropped: end the stream, the client re-lists
                return
            statuses = [status_message(r) for r in rt.containers.list(sandbox_id=event.sandbox_id)]
            pod = sandbox_convert.status_message(event.sandbox) if event.sandbox is not None else None
            yield api_pb2.ContainerEventResponse(
                container_id=event.container_id, container_event_type=event.kind, created_at=event.timestamp_ns,
                pod_sandbox_status=pod, containers_statuses=statuses)
    finally:
        rt.events.unsubscribe(queue)


HANDLERS = {"GetContainerEvents": get_container_events}
