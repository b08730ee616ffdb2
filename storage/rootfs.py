"""Container root filesystems: an overlayfs mount of the image's layers per container, and the container's image
volumes (KEP-4639): read-only overlays of other images' layers, mounted at containers/<id>/volumes/<n>.

containers/<id>/rootfs.json is written before anything is mounted, so a crash always leaves a
record that remove() or the next start can act on. Lower directories are named by their short
links (l/<6 chars>), so that mount options stay short (see overlay.py).

With an id map (a container of a pod with its own user namespace) the lower directories are
idmapped clones of the layers (see idmap.py), and the upper directory belongs to the pod's root:
the image's files are the pod root's, and what the container writes lands as its own ids. The
clones are attached at containers/<id>/lower/<n> only while an overlay is being mounted; what a
crash left there is unmounted before the directory is touched.
"""

from __future__ import annotations

import json
import os
import re
import threading
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hostos.atomicfile import atomic_write_json
from storage import overlay
from storage.errors import InvalidReference, MountError
from storage.fsutil import remove_tree, usage
from storage.idmap import IdMap
from storage.layers import LayerStore
from storage.unpack import unpack_layer

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Rootfs:
    container_id: str
    image_id: str
    path: Path     # the merged view: the container's /
    upper: Path    # what the container wrote
    idmapped: bool = False  # the image's files show as the id map's root
    volumes: tuple[Path, ...] = ()  # the image volumes' read-only views, in the order asked


@dataclass(frozen=True)
class ImageVolume:
    """An image whose root filesystem a container mounts read-only."""
    image_id: str
    chain_ids: list[str]


class RootfsManager:
    def __init__(self, root: Path, layers: LayerStore):
        self.root = Path(root)
        if any(ch in str(self.root) for ch in ",:="):
            raise MountError(f"storage root {self.root} must not contain ',', ':' or '=' (overlay options)")
        self.dir = self.root / "containers"
        self.dir.mkdir(exist_ok=True)
        self.layers = layers
        self._lock = threading.Lock()
        self._idmap_problem: list[str | None] = []  # probed once
        self._records: dict[str, dict[str, Any]] = {}
        self._container_locks: dict[str, threading.Lock] = {}
        for name in os.listdir(self.dir):
            record = self._read(name)
            overlay.release_attached(self.dir / name / "lower")  # a crash while mounting an idmapped overlay
            if record is None:  # created but never recorded, or half removed: never delete through a mount
                self._unmount_all(name)
                remove_tree(self.dir / name)
            else:
                self._records[name] = record

    def _read(self, container_id: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads((self.dir / container_id / "rootfs.json").read_text())
            return record
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def _rootfs(self, container_id: str, record: dict[str, Any]) -> Rootfs:
        base = self.dir / container_id
        volumes = tuple(base / "volumes" / str(n) for n in range(len(record.get("volumes") or [])))
        return Rootfs(container_id, record["image_id"], base / "merged", base / "upper", bool(record.get("idmap")),
                      volumes)

    def referenced_ids(self) -> set[str]:
        with self._lock:
            return set(self._records)

    def referenced_chain_ids(self) -> set[str]:
        """Layers a container's root or image volumes use."""
        with self._lock:
            return {c for record in self._records.values()
                    for c in [*record["chain_ids"], *(c for v in record.get("volumes") or [] for c in v["chain_ids"])]}

    def volume_users(self, image_id: str) -> list[str]:
        """The containers that mount `image_id` as an image volume."""
        with self._lock:
            return sorted(cid for cid, record in self._records.items()
                          if any(v["image_id"] == image_id for v in record.get("volumes") or []))

    def _lowers(self, container_id: str, chain_ids: list[str]) -> list[Path]:
        """The layers' directories, top first (as overlay lists them)."""
        lowers = []
        for chain in reversed(chain_ids):
            layer = self.layers.get(chain)
            if layer is None:
                raise MountError(f"container {container_id}: layer {chain} is missing from the store")
            lowers.append(self.layers.links / layer.link)
        return lowers

    def _mount(self, container_id: str, record: dict[str, Any]) -> None:
        """Mount whatever of the container's root and image volumes is not mounted."""
        base = self.dir / container_id
        idmap = IdMap(**record["idmap"]) if record.get("idmap") else None
        if not os.path.ismount(base / "merged"):
            lowers = self._lowers(container_id, record["chain_ids"]) or [base / "empty"]
            overlay.mount_layers(base / "merged", lowers, upper=base / "upper", work=base / "work",
                                 idmap=idmap if record["chain_ids"] else None, attach_dir=base / "lower")
        for n, volume in enumerate(record.get("volumes") or []):
            target = base / "volumes" / str(n)
            if not os.path.ismount(target):
                # a read-only overlay needs two lowers: the empty dir is the bottom one
                lowers = self._lowers(container_id, volume["chain_ids"]) + [base / "empty"]
                overlay.mount_layers(target, lowers, upper=None, work=None, idmap=idmap, attach_dir=base / "lower")

    def _unmount_all(self, container_id: str) -> None:
        base = self.dir / container_id
        overlay.unmount(base / "merged")
        for name in os.listdir(base / "volumes") if os.path.isdir(base / "volumes") else []:
            overlay.unmount(base / "volumes" / name)
        overlay.release_attached(base / "lower")

    @contextmanager
    def _container_lock(self, container_id: str) -> Iterator[None]:
        """Serialise work on one container without holding the shared lock across a mount."""
        if not _ID_RE.fullmatch(container_id):
            raise InvalidReference(f"invalid container id {container_id!r}")
        with self._lock:
            lock = self._container_locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def create(self, container_id: str, image_id: str, chain_ids: list[str], idmap: IdMap | None = None,
               volumes: Sequence[ImageVolume] = (), upper_layer: Path | None = None) -> Rootfs:
        """Make and mount the container's root and its image volumes, idmapped with `idmap` if given; if it
        already exists, make sure it is mounted. `upper_layer`, a layer tar (a restored checkpoint's rootfs
        changes), is unpacked safely into the upper directory before the mount; HostileLayer if it is unsafe."""
        base = self.dir / container_id
        with self._container_lock(container_id):
            with self._lock:
                exists = container_id in self._records
            if exists:
                return self._ensure_mounted(container_id)
            base.mkdir()
            try:
                for sub in ("upper", "work", "merged", "empty"):
                    (base / sub).mkdir()
                for n in range(len(volumes)):
                    (base / "volumes" / str(n)).mkdir(parents=True)
                if idmap is not None:  # the container's / and what it writes are the pod root's
                    os.chown(base / "upper", idmap.uid, idmap.gid)
                if upper_layer is not None:
                    unpack_layer(upper_layer, base / "upper")
                record = {"image_id": image_id, "chain_ids": chain_ids, "idmap": idmap.as_dict() if idmap else None,
                          "volumes": [{"image_id": v.image_id, "chain_ids": v.chain_ids} for v in volumes]}
                atomic_write_json(base / "rootfs.json", record)
                with self._lock:
                    self._records[container_id] = record
                self._mount(container_id, record)
            except BaseException:
                with self._lock:
                    self._records.pop(container_id, None)
                self._unmount_all(container_id)
                remove_tree(base)
                raise
        return self._rootfs(container_id, record)

    def remove(self, container_id: str) -> tuple[list[str], Path | None]:
        """Unmount, then move the directory aside for the caller to delete (one rename instead of an unlink per
        file while the caller waits; no id starts with '.', and the next start deletes one a crash left, as any
        directory without rootfs.json). Returns the layers it used and the moved directory (None if none)."""
        base = self.dir / container_id
        doomed = None
        with self._container_lock(container_id):
            if os.path.lexists(base):
                self._unmount_all(container_id)
                (base / "rootfs.json").unlink(missing_ok=True)
                doomed = self.dir / f".removed-{container_id}"
                remove_tree(doomed)  # an earlier removal of the same id that a crash interrupted
                os.rename(base, doomed)
            with self._lock:
                self._container_locks.pop(container_id, None)
                record = self._records.pop(container_id, None) or {"chain_ids": []}
        return [*record["chain_ids"], *(c for v in record.get("volumes") or [] for c in v["chain_ids"])], doomed

    def unmount(self, container_id: str) -> None:
        """Unmount the root and volumes of a container whose processes are gone; its files stay for removal."""
        with self._container_lock(container_id):
            if os.path.lexists(self.dir / container_id):
                self._unmount_all(container_id)

    def _ensure_mounted(self, container_id: str) -> Rootfs:
        record = self._read(container_id)
        if record is None:
            raise MountError(f"container {container_id} has no root filesystem")
        self._mount(container_id, record)
        return self._rootfs(container_id, record)

    def ensure_mounted(self, container_id: str) -> Rootfs:
        """After a reboot (or an unmount behind our back), mount the existing upper layer and volumes again."""
        with self._container_lock(container_id):
            return self._ensure_mounted(container_id)

    def idmap_problem(self) -> str | None:
        """Why this kernel and the store's filesystem cannot give a rootfs an id map, or None when they can."""
        with self._lock:
            if not self._idmap_problem:
                self._idmap_problem.append(overlay.idmap_problem(self.root / ".idmap-probe"))
            return self._idmap_problem[0]

    def writable_usage(self, container_id: str) -> tuple[int, int]:
        return usage(self.dir / container_id / "upper")

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes of all writable layers (never walking into the mounted views)."""
        total_bytes = total_inodes = 0
        with self._lock:
            ids = list(self._records)
        for container_id in ids:
            b, i = self.writable_usage(container_id)
            total_bytes += b
            total_inodes += i
        return total_bytes, total_inodes
