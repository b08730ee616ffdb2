"""Pre-serialised answers to the small reads kubelet polls: ContainerStatus, PodSandboxStatus, ImageStatus and
the List calls.

Building a CRI message from a record costs more than the rest of such a call (130 us for a ContainerStatus,
the same again for each deep-copied image record; bench/reads.py), so the bytes are kept and sent as they
are (servicer.py's serializer passes bytes through). They stay current without hooks in the core:

- container and sandbox records are pydantic models whose fields the core reassigns (their nested parts are
  frozen), so an answer is reused while the record is the same object and a snapshot of its fields still
  equals them; any assignment re-renders it at the next read;
- the image store counts its changes (``ImageStore.generation``); the image answers are dropped when the
  count moves, and rebuilt from the records under the store's index lock, without copies.

Everything here runs on the event loop, like the handlers: no locks.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cri.api.v1 import api_pb2

from cri.server.container_convert import container_message, status_message
from cri.server.image_convert import to_cri_image
from cri.server.sandbox_convert import sandbox_message
from cri.server.sandbox_convert import status_message as sandbox_status_message

_PRUNE_AT = 256


class RecordAnswers:
    """The bytes `render(record)` made, by record id, while the record is unchanged."""

    def __init__(self, render: Callable[[Any], bytes], live: Callable[[str], bool]):
        self._render = render
        self._live = live
        self._entries: dict[str, tuple[Any, dict, bytes]] = {}
        self._prune_at = _PRUNE_AT

    def get(self, record) -> bytes:
        fields = record.__dict__
        entry = self._entries.get(record.id)
        if entry is not None and entry[0] is record and entry[1] == fields:
            return entry[2]
        body = self._render(record)
        self._entries[record.id] = (record, dict(fields), body)
        if len(self._entries) > self._prune_at:
            self._entries = {k: v for k, v in self._entries.items() if self._live(k)}
            self._prune_at = max(_PRUNE_AT, 2 * len(self._entries))
        return body


def _container_status(record) -> bytes:
    return api_pb2.ContainerStatusResponse(status=status_message(record)).SerializeToString()


def _container_item(record) -> bytes:
    """One entry of ListContainersResponse.containers with its field tag: the answer is their concatenation."""
    return api_pb2.ListContainersResponse(containers=[container_message(record)]).SerializeToString()


def _sandbox_status(record) -> bytes:
    """PodSandboxStatusResponse without its timestamp, which each answer appends."""
    return api_pb2.PodSandboxStatusResponse(status=sandbox_status_message(record)).SerializeToString()


def _sandbox_item(record) -> bytes:
    return api_pb2.ListPodSandboxResponse(items=[sandbox_message(record)]).SerializeToString()


class ReadAnswers:
    """The answers of one runtime (`rt`), made by its handlers on first use."""

    def __init__(self, rt):
        self._rt = rt
        live_container = lambda cid: rt.containers.find(cid) is not None  # noqa: E731
        live_sandbox = lambda sid: rt.sandboxes.find(sid) is not None  # noqa: E731
        self.container_status = RecordAnswers(_container_status, live_container)
        self.container_item = RecordAnswers(_container_item, live_container)
        self.sandbox_status = RecordAnswers(_sandbox_status, live_sandbox)
        self.sandbox_item = RecordAnswers(_sandbox_item, live_sandbox)
        self._image_generation = -1
        self._image_status: dict[str, bytes] = {}
        self._image_list: bytes | None = None
        self.status: Any = None  # Status without verbose, kept by runtime_status.py

    def sandbox_status_now(self, record) -> bytes:
        return self.sandbox_status.get(record) + api_pb2.PodSandboxStatusResponse(
            timestamp=time.time_ns()).SerializeToString()

    def _images_current(self) -> None:
        generation = self._rt.images.generation
        if generation != self._image_generation:
            self._image_status.clear()
            self._image_list = None
            self._image_generation = generation

    def image_message(self, record) -> api_pb2.Image:
        return to_cri_image(record, self._rt.images.pinned(record))

    def image_status(self, ref: str) -> bytes:
        """ImageStatusResponse for `ref` as given (a name, a digest reference, an id or an id prefix)."""
        self._images_current()
        body = self._image_status.get(ref)
        if body is None:
            images = self._rt.images.answer(ref, self.image_message)
            body = api_pb2.ImageStatusResponse(image=images[0] if images else None).SerializeToString()
            if len(self._image_status) >= _PRUNE_AT:
                self._image_status.clear()  # names kubelet asked for once: rebuilt at the next ask
            self._image_status[ref] = body
        return body

    def image_list(self) -> bytes:
        self._images_current()
        if self._image_list is None:
            images = self._rt.images.answer(None, self.image_message)
            self._image_list = api_pb2.ListImagesResponse(images=images).SerializeToString()
        return self._image_list
