"""Container and pod sandbox lifecycle events (created, started, stopped, deleted) broadcast to
GetContainerEvents streams and to in-process listeners (the metrics). A sandbox's own events carry its id as the
container id, as containerd sends them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CREATED, STARTED, STOPPED, DELETED = 0, 1, 2, 3  # CRI ContainerEventType values
QUEUE_LIMIT = 1024


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str
    sandbox_id: str
    kind: int
    timestamp_ns: int
    sandbox: Any = None  # a copy of the pod's record when the event happened (None once it is gone)


class EventBus:
    """Fan-out without back-pressure on the runtime: a subscriber too slow to keep up is dropped (it receives
    None and ends its stream), never waited for."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Any]] = set()
        self._listeners: list[Callable[[ContainerEvent], None]] = []
        self._snapshot: Callable[[str], Any] = lambda sandbox_id: None

    def set_sandbox_snapshot(self, snapshot: Callable[[str], Any]) -> None:
        """How to copy a pod's record: every event is stamped with its pod as it was then, since a stream sends
        it later, maybe after the pod was removed (kubelet drops an event without the pod's status)."""
        self._snapshot = snapshot

    def subscribe(self) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        self._subscribers.discard(queue)

    def listen(self, listener: Callable[[ContainerEvent], None]) -> None:
        """Call `listener` with each event as it is published, on the publisher's path: it must be quick and
        reads the records as they are now; its events carry no pod copy (only streams pay for one)."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[ContainerEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, event: ContainerEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("container event listener %r failed", listener)
        if not self._subscribers:  # the pod's snapshot is a deep copy: none on the start/stop path for nobody
            return
        if event.sandbox is None:
            event = dataclasses.replace(event, sandbox=self._snapshot(event.sandbox_id))
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("container event subscriber fell %d events behind; dropping it", QUEUE_LIMIT)
                self._subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)  # tells the stream to end; kubelet re-subscribes and relists

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
