"""Container root filesystems: an overlayfs mount of the image's layers per container.

containers/<id>/rootfs.json is written before anything is mounted, so a crash always leaves a
record that remove() or the next start can act on. Lower directories are named by their short
links (l/<12 chars>); when even those overflow the one-page mount option limit (hundreds of
layers), the mount is made by mount(8) running in the store root with relative paths.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from storage.errors import InvalidReference, MountError
from storage.fsutil import atomic_write_json, remove_tree, usage
from storage.layers import LayerStore

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_OPTIONS = 4000  # the kernel copies one page of mount data
_MNT_DETACH = 2
_MOUNT_TIMEOUT = 30.0
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Rootfs:
    container_id: str
    image_id: str
    path: Path     # the merged view: the container's /
    upper: Path    # what the container wrote


def _mount_overlay(target: Path, options: str, relative_to: Path | None) -> None:
    """mount(2) directly; with `relative_to`, mount(8) run in that directory resolves the
    relative lower paths (the kernel resolves them against the caller's cwd, which a
    multi-threaded daemon cannot change)."""
    if relative_to is None:
        if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
            err = ctypes.get_errno()
            raise MountError(f"mount overlay on {target}: {os.strerror(err)}")
        return
    try:
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], cwd=relative_to,
                              capture_output=True, text=True, timeout=_MOUNT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MountError(f"mount overlay on {target}: {exc}") from None
    if proc.returncode != 0:
        raise MountError(f"mount overlay on {target}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def _unmount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == 22:  # EINVAL: not a mount point (already unmounted)
        return
    if err == 16 and _libc.umount2(os.fsencode(target), _MNT_DETACH) == 0:  # EBUSY: detach, kernel finishes later
        return
    raise MountError(f"unmount {target}: {os.strerror(ctypes.get_errno() or err)}")


class RootfsManager:
    def __init__(self, root: Path, layers: LayerStore):
        self.root = Path(root)
        if any(ch in str(self.root) for ch in ",:="):
            raise MountError(f"storage root {self.root} must not contain ',', ':' or '=' (overlay options)")
        self.dir = self.root / "containers"
        self.dir.mkdir(exist_ok=True)
        self.layers = layers
        self._lock = threading.Lock()
        self._chains: dict[str, list[str]] = {}
        self._container_locks: dict[str, threading.Lock] = {}
        for name in os.listdir(self.dir):
            record = self._read(name)
            if record is None:  # created but never recorded, or half removed: never delete through a mount
                if os.path.ismount(self.dir / name / "merged"):
                    _unmount(self.dir / name / "merged")
                remove_tree(self.dir / name)
            else:
                self._chains[name] = record["chain_ids"]

    def _read(self, container_id: str) -> dict | None:
        try:
            return json.loads((self.dir / container_id / "rootfs.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def _rootfs(self, container_id: str, image_id: str) -> Rootfs:
        base = self.dir / container_id
        return Rootfs(container_id, image_id, base / "merged", base / "upper")

    def referenced_ids(self) -> set[str]:
        with self._lock:
            return set(self._chains)

    def referenced_chain_ids(self) -> set[str]:
        with self._lock:
            return {c for chains in self._chains.values() for c in chains}

    def _options(self, container_id: str, chain_ids: list[str], *, relative: bool) -> str:
        base = self.dir / container_id
        lowers = []
        for chain in reversed(chain_ids):  # overlay lists the top layer first
            layer = self.layers.get(chain)
            if layer is None:
                raise MountError(f"container {container_id}: layer {chain} is missing from the store")
            lowers.append(layer.link if relative else str(self.layers.links / layer.link))
        if not lowers:
            lowers.append(str(base / "empty"))
        return f"lowerdir={':'.join(lowers)},upperdir={base / 'upper'},workdir={base / 'work'}"

    def _mount(self, container_id: str, chain_ids: list[str]) -> None:
        options = self._options(container_id, chain_ids, relative=False)
        relative_to = None
        if len(options) > _MAX_OPTIONS:
            options, relative_to = self._options(container_id, chain_ids, relative=True), self.layers.links
        _mount_overlay(self.dir / container_id / "merged", options, relative_to)

    @contextmanager
    def _container_lock(self, container_id: str) -> Iterator[None]:
        """Serialise work on one container without holding the shared lock across a mount."""
        if not _ID_RE.fullmatch(container_id):
            raise InvalidReference(f"invalid container id {container_id!r}")
        with self._lock:
            lock = self._container_locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def create(self, container_id: str, image_id: str, chain_ids: list[str]) -> Rootfs:
        """Make and mount the container's root; if it already exists, make sure it is mounted."""
        base = self.dir / container_id
        with self._container_lock(container_id):
            with self._lock:
                exists = container_id in self._chains
            if exists:
                return self._ensure_mounted(container_id)
            base.mkdir()
            try:
                for sub in ("upper", "work", "merged", *(() if chain_ids else ("empty",))):
                    (base / sub).mkdir()
                atomic_write_json(base / "rootfs.json", {"image_id": image_id, "chain_ids": chain_ids})
                with self._lock:
                    self._chains[container_id] = list(chain_ids)
                self._mount(container_id, chain_ids)
            except BaseException:
                with self._lock:
                    self._chains.pop(container_id, None)
                _unmount(base / "merged")
                remove_tree(base)
                raise
        return self._rootfs(container_id, image_id)

    def remove(self, container_id: str) -> list[str]:
        """Unmount and delete; nothing to do if it does not exist. Returns the layers it used."""
        base = self.dir / container_id
        with self._container_lock(container_id):
            if os.path.lexists(base / "merged"):
                _unmount(base / "merged")
            (base / "rootfs.json").unlink(missing_ok=True)
            remove_tree(base)
            with self._lock:
                self._container_locks.pop(container_id, None)
                return self._chains.pop(container_id, [])

    def _ensure_mounted(self, container_id: str) -> Rootfs:
        record = self._read(container_id)
        if record is None:
            raise MountError(f"container {container_id} has no root filesystem")
        merged = self.dir / container_id / "merged"
        if not os.path.ismount(merged):
            self._mount(container_id, record["chain_ids"])
        return self._rootfs(container_id, record["image_id"])

    def ensure_mounted(self, container_id: str) -> Rootfs:
        """After a reboot (or an unmount behind our back), mount the existing upper layer again."""
        with self._container_lock(container_id):
            return self._ensure_mounted(container_id)

    def writable_usage(self, container_id: str) -> tuple[int, int]:
        return usage(self.dir / container_id / "upper")

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes of all writable layers (never walking into the mounted views)."""
        total_bytes = total_inodes = 0
        with self._lock:
            ids = list(self._chains)
        for container_id in ids:
            b, i = self.writable_usage(container_id)
            total_bytes += b
            total_inodes += i
        return total_bytes, total_inodes
