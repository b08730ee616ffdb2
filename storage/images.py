"""The image store: the front callers use for pulls, image records, lookups, removal, GC, and container root
filesystems; each call goes to the part that owns it.

    image_records.py  records on disk and in memory, lookups by name or id, tag moves, pins
    image_pull.py     pulls (sources, coalescing, retries) and the install of an image's blobs and layers
    manifest.py       descriptors, manifests and configs, checked; the record made from them
    image_gc.py       the sweep of what nothing references, and the check after an unclean shutdown
    archive.py        OCI layouts and docker-archives to import

Layout under root:
    blobs/sha256/<hex>    verified content (manifests, configs, compressed layers)
    ingest/               downloads in progress (emptied at start)
    layers/<chain hex>/   unpacked layers (see layers.py); l/ short links to them
    images/<id hex>.json  image records, written atomically after everything they name exists
    containers/<id>/      per-container overlay upper/work/merged (see rootfs.py)

An image becomes visible only when its record is written, after all its blobs and layers are in
place, so a crash or failure mid-pull never shows a half image; whatever it left unreferenced is
removed at the next start (or by the failed pull itself).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from storage import reference as refs
from storage.auth import Credentials
from storage.content import ContentStore
from storage.errors import ImageInUse, ImageNotFound
from storage.fsutil import usage
from storage.idmap import IdMap
from storage.image_gc import Collector, GCReport
from storage.image_records import ImageRecord, ImageRecords
from storage.layers import LayerStore
from storage.registries_conf import RegistriesConfig
from storage.rootfs import ImageVolume, Rootfs, RootfsManager
from storage.unpack import UnpackLimits

if TYPE_CHECKING:
    from storage.image_pull import Observer, Puller

T = TypeVar("T")


@dataclass
class FsUsage:
    """One ImageFsInfo entry: a directory, what it holds, and its use."""
    kind: str          # "image" or "container"
    mountpoint: str
    used_bytes: int
    inodes_used: int


class ImageStore:
    """Thread-safe; every public method is blocking (call it from a worker thread in async code)."""

    def __init__(self, root: Path, registries: RegistriesConfig | None = None, auth_file: Path | None = None,
                 progress_timeout: float = 60.0, *, parallel_downloads: int = 4,
                 limits: UnpackLimits = UnpackLimits(), durable: bool = True,
                 checkpoint: Callable[[str], None] = lambda name: None, background_reclaim: bool = False):
        """`background_reclaim`: removed layers' and containers' roots' trees are deleted by a worker thread after
        the removal returns (the daemon's choice: RemoveImage then costs a rename instead of ~400 unlinks for
        busybox, a container's reclaim a rename instead of its upper and work directories' unlinks); they are
        renamed away first, so no one sees them, and a crash leaves them to the sweep at the next start.
        `checkpoint` is called at named steps of a pull, for the fault-injection suite."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.content = ContentStore(self.root)
        self.layers = LayerStore(self.root, limits)
        self.rootfs = RootfsManager(self.root, self.layers)
        self._records = ImageRecords(self.root, registries or RegistriesConfig(), durable)
        self._gc = Collector(self._records, self.content, self.layers, self.rootfs, background_reclaim)
        self._puller_made: Puller | None = None
        self._puller_lock = threading.Lock()

        def make_puller() -> Puller:
            from storage.image_pull import Puller

            return Puller(self.root, self._records, self.content, self.layers, self._gc, auth_file=auth_file,
                          progress_timeout=progress_timeout, parallel_downloads=parallel_downloads,
                          durable=durable, checkpoint=checkpoint)

        self._make_puller = make_puller
        self._gc.sweep_all()

    @property
    def _puller(self) -> Puller:
        """Made at the first pull or archive import: with the registry client and http.client it imports, 0.4 MB of
        the idle daemon's RSS (bench/memory.py) that a daemon which never pulls would hold for nothing."""
        with self._puller_lock:
            if self._puller_made is None:
                self._puller_made = self._make_puller()
            return self._puller_made

    @property
    def registries(self) -> RegistriesConfig:
        return self._records.registries

    @registries.setter
    def registries(self, value: RegistriesConfig) -> None:
        """A reload's new registries.conf: the next lookup and pull use it."""
        self._records.registries = value

    @property
    def generation(self) -> int:
        """Counts changes to the records, for readers that keep answers made from them."""
        return self._records.generation

    # ---- lookups -----------------------------------------------------------------------

    def get(self, name_or_id: str) -> ImageRecord | None:
        """By name:tag, name@digest, id, or unique id prefix; None if no image matches."""
        return self._records.get(name_or_id)

    def list(self, filter_ref: str | None = None) -> builtins.list[ImageRecord]:
        return self._records.list(filter_ref)

    def answer(self, name_or_id: str | None, render: Callable[[ImageRecord], T]) -> builtins.list[T]:
        """render(record) of the image `name_or_id` names (none or one), or of every image when it is None, under
        the index lock and without copies: for readers that only turn records into answers (and must not keep
        them). An ambiguous id prefix raises InvalidReference, as in get."""
        return self._records.answer(name_or_id, render)

    # ---- pulls and archives ------------------------------------------------------------

    def pull(self, ref: str, credentials: Credentials | None = None, observe: Observer | None = None) -> ImageRecord:
        """Pull `ref` (registries.conf applies) and return its record; see Puller.pull."""
        return self._puller.pull(ref, credentials, observe)

    def import_archive(self, path: Path, pin: bool = False) -> builtins.list[ImageRecord]:
        """Load every image of an OCI layout or docker-archive, all or none; `pin` marks them pinned."""
        from storage.archive import read_archive
        from storage.image_pull import no_space_error
        installed: builtins.list[tuple[ImageRecord, builtins.list[tuple[refs.Reference, str | None]]]] = []
        with no_space_error(f"import {path}", self.root):
            try:
                with read_archive(Path(path)) as archive:
                    for image in archive.images():
                        record = self._puller.install(image.config, image.layers, image.manifests, image.fetch,
                                                      where=f"{path}:{image.where}")
                        digest = image.manifests[0].digest if image.manifests else None
                        installed.append((record, [(tag, digest) for tag in image.tags]))
            except BaseException:
                self._puller.forget([record for record, _ in installed])  # the pins a commit would have released
                raise
            return self._puller.commit(installed, pin)

    # ---- removal, GC -------------------------------------------------------------------

    def verify(self) -> builtins.list[str]:
        """After an unclean shutdown: drop what is damaged; returns what it did (see Collector.verify)."""
        return self._gc.verify()

    def remove(self, name_or_id: str, in_use: Callable[[str], bool] = lambda image_id: False) -> bool:
        """Remove the image (all its tags) unless a container uses it; False if there was none."""
        with self._records.persist_lock, self._records.lock:
            record = self._records.lookup(name_or_id)
            if record is None:
                return False
            if in_use(record.id):
                raise ImageInUse(f"image {name_or_id} ({record.id}) is in use by a container")
            users = self.rootfs.volume_users(record.id)
            if users:
                raise ImageInUse(f"image {name_or_id} ({record.id}) is mounted as an image volume by container "
                                 f"{users[0]}")
            self._records.drop(record)
        self._gc.sweep(set(record.blobs) | set(record.chain_ids))
        return True

    def gc(self, in_use: Callable[[str], bool] = lambda image_id: False) -> GCReport:
        """Remove blobs and layers no image, container or pull references. Images themselves stay
        (kubelet decides which images go); `in_use` is accepted for the contract's symmetry."""
        del in_use
        return self._gc.sweep_all()

    def fs_info(self) -> builtins.list[FsUsage]:
        blobs_bytes, blobs_inodes = usage(self.content.blobs)
        layer_bytes, layer_inodes = self.layers.usage()
        c_bytes, c_inodes = self.rootfs.usage()
        return [FsUsage("image", str(self.root), blobs_bytes + layer_bytes, blobs_inodes + layer_inodes),
                FsUsage("container", str(self.rootfs.dir), c_bytes, c_inodes)]

    # ---- root filesystems --------------------------------------------------------------

    def create_rootfs(self, container_id: str, image_id: str, idmap: IdMap | None = None,
                      volume_images: Sequence[str] = (), upper_layer: Path | None = None) -> Rootfs:
        """Mount a new root for the container, and the root filesystems of `volume_images` read-only as its image
        volumes (with `idmap`, the images' files are its root's: see idmap_problem). Their layers are pinned
        meanwhile so that a removal of an image cannot delete them before the rootfs record names them."""
        with self._records.lock:
            record = self._records.lookup(image_id)
            if record is None:
                raise ImageNotFound(f"image {image_id} not found")
            volumes = []
            for name in volume_images:
                found = self._records.lookup(name)
                if found is None:
                    raise ImageNotFound(f"image {name} of an image volume is not in the store: pull it first")
                volumes.append(ImageVolume(found.id, list(found.chain_ids)))
            pins = set(record.chain_ids) | {c for v in volumes for c in v.chain_ids}
            self._records.pin(pins)
        try:
            return self.rootfs.create(container_id, record.id, record.chain_ids, idmap, volumes, upper_layer)
        finally:
            self._records.unpin(pins)

    def read_layers(self, image_id: str, read: Callable[[builtins.list[Path]], T]) -> T:
        """read(the image's unpacked layer directories, bottom first), with its layers pinned meanwhile so that a
        removal of the image cannot delete them under the reader (a checkpoint image's files are read so)."""
        with self._records.lock:
            record = self._records.lookup(image_id)
            if record is None:
                raise ImageNotFound(f"image {image_id} not found")
            pins = set(record.chain_ids)
            self._records.pin(pins)
        try:
            dirs = []
            for chain in record.chain_ids:
                layer = self.layers.get(chain)
                if layer is None:
                    raise ImageNotFound(f"image {image_id}: layer {chain} is missing from the store")
                dirs.append(self.layers.links / layer.link)
            return read(dirs)
        finally:
            self._records.unpin(pins)

    def idmap_problem(self) -> str | None:
        """Why root filesystems cannot be idmapped here (kernel, filesystem), or None; probed once."""
        return self.rootfs.idmap_problem()

    def rootfs_ids(self) -> builtins.list[str]:
        """Containers that have a root filesystem here (for reconciliation at start)."""
        return sorted(self.rootfs.referenced_ids())

    def remove_rootfs(self, container_id: str) -> None:
        """Unmount and delete the container's root; layers of an image removed meanwhile go too."""
        chain_ids, doomed = self.rootfs.remove(container_id)
        self._gc.sweep(set(chain_ids))
        if doomed is not None:
            self._gc.discard(doomed)

    def unmount_rootfs(self, container_id: str) -> None:
        self.rootfs.unmount(container_id)

    def ensure_rootfs_mounted(self, container_id: str) -> Rootfs:
        return self.rootfs.ensure_mounted(container_id)

    def writable_layer_usage(self, container_id: str) -> tuple[int, int]:
        return self.rootfs.writable_usage(container_id)
