"""The image service the server and the container manager use: the blocking storage.ImageStore
run in worker threads, so pulls and unpacking never stall the event loop."""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Callable, TypeVar

from cri.observe import trace
from hostos import libc
from storage.auth import Credentials
from storage.idmap import IdMap
from storage.image_gc import GCReport
from storage.image_records import ImageRecord
from storage.images import FsUsage, ImageStore
from storage.pinned import PinnedImages
from storage.rootfs import Rootfs

T = TypeVar("T")


def _return_free_heap() -> None:
    """A pull frees its buffers into glibc's per-thread arenas, which keep the pages; malloc_trim hands
    the free ones back to the kernel (about 2 MB after a 200 MB pull)."""
    libc.malloc_trim()


async def _nothing_pending() -> None:
    pass


class ImageService:
    def __init__(self, store: ImageStore, pinned_patterns: Sequence[str] = (),
                 on_pull: Callable[[str, float, int, str], None] | None = None):
        """`on_pull(reference, seconds, bytes downloaded, error class or "")` hears of every pull (the metrics)."""
        self.store = store
        self._pinned = PinnedImages(list(pinned_patterns))
        self._in_use: Callable[[str], bool] = lambda image_id: False
        self._settled: Callable[[], Awaitable[None]] = _nothing_pending
        self._on_pull = on_pull
        self._idmap_problem: tuple[str | None] | None = None

    def set_in_use(self, in_use: Callable[[str], bool], settled: Callable[[], Awaitable[None]]) -> None:
        """The container manager says which image ids its containers use (checked on removal), and lets a
        removal wait for the removed containers' roots, which are reclaimed in the background."""
        self._in_use = in_use
        self._settled = settled

    async def pull(self, ref: str, credentials: Credentials | None = None, pod: str = "") -> ImageRecord:
        """Pull in a worker thread; the pull, its downloads and its unpacking are phases of `pod` when the
        caller named the pod the image is for."""
        received = 0
        lock = threading.Lock()
        parent = None

        def observe(kind: str, start: float, end: float, nbytes: int) -> None:
            nonlocal received
            with lock:
                received += nbytes
            trace.record(kind, start, end, pod, ref, parent)

        started = time.monotonic()
        error = ""
        try:
            with trace.phase("pull", pod=pod, subject=ref, image=ref):
                parent = trace.current_context()  # the pull's span: downloads and unpacking are its children
                return await asyncio.to_thread(self.store.pull, ref, credentials, observe)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            if self._on_pull is not None:
                self._on_pull(ref, time.monotonic() - started, received, error)
            await asyncio.to_thread(_return_free_heap)

    def status(self, ref: str) -> ImageRecord | None:
        """In-memory lookup: cheap enough for the event loop (kubelet asks often)."""
        return self.store.get(ref)

    def set_pinned(self, pinned_patterns: list[str]) -> None:
        """New [storage] pinned_images from a configuration reload (SIGHUP)."""
        self._pinned = PinnedImages(list(pinned_patterns))

    def pinned(self, record: ImageRecord) -> bool:
        """Pinned at import, or named by a configured pattern: kubelet's image GC keeps it."""
        return self._pinned.pinned(record.id, record.repo_tags + record.repo_digests, record.pinned)

    def list(self, filter_ref: str | None = None) -> list[ImageRecord]:
        return self.store.list(filter_ref)

    @property
    def generation(self) -> int:
        """Moves whenever an image record changes: answers made by `answer` are stale then."""
        return self.store.generation

    def answer(self, ref: str | None, render: Callable[[ImageRecord], T]) -> builtins.list[T]:
        """render(record) of the image `ref` names, or of every image when it is None, without copying records
        (`render` must not keep them); in memory, cheap enough for the event loop."""
        return self.store.answer(ref, render)

    async def remove(self, ref: str) -> bool:
        await self._settled()
        return await asyncio.to_thread(self.store.remove, ref, self._in_use)

    async def fs_info(self) -> builtins.list[FsUsage]:
        return await asyncio.to_thread(self.store.fs_info)

    async def gc(self) -> GCReport:
        return await asyncio.to_thread(self.store.gc, self._in_use)

    async def import_archive(self, path: Path, pin: bool = False) -> builtins.list[ImageRecord]:
        return await asyncio.to_thread(self.store.import_archive, path, pin)

    async def create_rootfs(self, container_id: str, image_id: str, idmap: IdMap | None = None,
                            volume_images: Sequence[str] = (), upper_layer: Path | None = None) -> Rootfs:
        return await asyncio.to_thread(self.store.create_rootfs, container_id, image_id, idmap, list(volume_images),
                                       upper_layer)

    async def read_layers(self, image_id: str, read: Callable[[builtins.list[Path]], T]) -> T:
        """read(the image's layer directories, bottom first) in a worker thread, with the layers pinned."""
        return await asyncio.to_thread(self.store.read_layers, image_id, read)

    async def idmap_problem(self) -> str | None:
        """Why a user-namespaced container's rootfs cannot be idmapped on this host, or None (probed once, in a
        worker thread; Status asks for every handler, so the answer is remembered here, without a thread hop)."""
        if self._idmap_problem is None:
            self._idmap_problem = (await asyncio.to_thread(self.store.idmap_problem),)
        return self._idmap_problem[0]

    def rootfs_ids(self) -> builtins.list[str]:
        return self.store.rootfs_ids()

    async def remove_rootfs(self, container_id: str) -> None:
        await asyncio.to_thread(self.store.remove_rootfs, container_id)

    async def unmount_rootfs(self, container_id: str) -> None:
        """Unmount an exited container's root (RemoveContainer deletes it later)."""
        await asyncio.to_thread(self.store.unmount_rootfs, container_id)

    async def ensure_rootfs_mounted(self, container_id: str) -> Rootfs:
        return await asyncio.to_thread(self.store.ensure_rootfs_mounted, container_id)

    async def writable_layer_usage(self, container_id: str) -> tuple[int, int]:
        return await asyncio.to_thread(self.store.writable_layer_usage, container_id)
