"""Container root filesystems: an overlayfs mount of the image's layers per container.

containers/<id>/rootfs.json is written before anything is mounted, so a crash always leaves a
record that remove() or the next start can act on. Lower directories are named by their short
links (l/<12 chars>); when even those overflow the one-page mount option limit (hundreds of
layers), the mount is made by mount(8) running in the store root with relative paths.

With an id map (a container of a pod with its own user namespace) the lower directories are
idmapped clones of the layers attached at containers/<id>/lower/<n> only while the overlay is
being mounted (see idmap.py), and the upper directory belongs to the pod's root: the image's
files are the pod root's, and what the container writes lands as its own ids. Anything left in
lower/ by a crash is unmounted before the directory is touched: removing through an attached
clone would delete the layer's files.
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

from storage import idmap as idmapping
from storage.errors import InvalidReference, MountError
from storage.fsutil import atomic_write_json, remove_tree, usage
from storage.idmap import IdMap
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
    idmapped: bool = False  # the image's files show as the id map's root


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


def _release_lowers(base: Path) -> None:
    """Unmount and remove the idmapped clones attached below base/lower; rmdir refuses a directory that is still
    a mount point, so a failure here stops whoever would delete the tree through it."""
    attached = base / "lower"
    try:
        names = os.listdir(attached)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        idmapping.detach(attached / name)
        try:
            os.rmdir(attached / name)
        except OSError as exc:
            raise MountError(f"removing {attached / name}: {exc.strerror}") from None
    os.rmdir(attached)


def _release_probe(scratch: Path) -> None:
    if not os.path.lexists(scratch):
        return
    if os.path.ismount(scratch / "merged"):
        _unmount(scratch / "merged")
    idmapping.detach(scratch / "lower")
    if os.path.ismount(scratch / "lower"):
        raise MountError(f"{scratch / 'lower'} is still mounted")
    remove_tree(scratch)


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
        self._chains: dict[str, list[str]] = {}
        self._container_locks: dict[str, threading.Lock] = {}
        for name in os.listdir(self.dir):
            record = self._read(name)
            _release_lowers(self.dir / name)  # a crash while mounting an idmapped rootfs
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

    def _rootfs(self, container_id: str, record: dict) -> Rootfs:
        base = self.dir / container_id
        return Rootfs(container_id, record["image_id"], base / "merged", base / "upper", bool(record.get("idmap")))

    def referenced_ids(self) -> set[str]:
        with self._lock:
            return set(self._chains)

    def referenced_chain_ids(self) -> set[str]:
        with self._lock:
            return {c for chains in self._chains.values() for c in chains}

    def _lowers(self, container_id: str, chain_ids: list[str]) -> list[Path]:
        """The layers' directories, top first (as overlay lists them)."""
        lowers = []
        for chain in reversed(chain_ids):
            layer = self.layers.get(chain)
            if layer is None:
                raise MountError(f"container {container_id}: layer {chain} is missing from the store")
            lowers.append(self.layers.links / layer.link)
        return lowers

    def _mount(self, container_id: str, chain_ids: list[str], idmap: IdMap | None) -> None:
        base = self.dir / container_id
        lowers = self._lowers(container_id, chain_ids) if chain_ids else [base / "empty"]
        if idmap is None or not chain_ids:
            self._mount_lowers(base, lowers)
            return
        attached = base / "lower"
        attached.mkdir(exist_ok=True)
        try:
            with idmapping.user_namespace(idmap) as userns:
                for n, source in enumerate(lowers):
                    (attached / str(n)).mkdir()
                    idmapping.attach_idmapped(source.resolve(), attached / str(n), userns)
            self._mount_lowers(base, [attached / str(n) for n in range(len(lowers))])
        finally:
            _release_lowers(base)  # overlay holds its own clones of the layers

    def _mount_lowers(self, base: Path, lowers: list[Path]) -> None:
        """Mount the overlay; relative lower paths through mount(8) when absolute ones overflow the option page."""
        def options(names: list[str]) -> str:
            return f"lowerdir={':'.join(names)},upperdir={base / 'upper'},workdir={base / 'work'}"

        text = options([str(p) for p in lowers])
        relative_to = None
        if len(text) > _MAX_OPTIONS:
            relative_to = lowers[0].parent
            text = options([p.name for p in lowers])
        _mount_overlay(base / "merged", text, relative_to)

    @contextmanager
    def _container_lock(self, container_id: str) -> Iterator[None]:
        """Serialise work on one container without holding the shared lock across a mount."""
        if not _ID_RE.fullmatch(container_id):
            raise InvalidReference(f"invalid container id {container_id!r}")
        with self._lock:
            lock = self._container_locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def create(self, container_id: str, image_id: str, chain_ids: list[str], idmap: IdMap | None = None) -> Rootfs:
        """Make and mount the container's root, idmapped with `idmap` if given; if it already exists, make sure
        it is mounted."""
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
                if idmap is not None:  # the container's / and what it writes are the pod root's
                    os.chown(base / "upper", idmap.uid, idmap.gid)
                record = {"image_id": image_id, "chain_ids": chain_ids, "idmap": idmap.as_dict() if idmap else None}
                atomic_write_json(base / "rootfs.json", record)
                with self._lock:
                    self._chains[container_id] = list(chain_ids)
                self._mount(container_id, chain_ids, idmap)
            except BaseException:
                with self._lock:
                    self._chains.pop(container_id, None)
                _unmount(base / "merged")
                _release_lowers(base)
                remove_tree(base)
                raise
        return self._rootfs(container_id, record)

    def remove(self, container_id: str) -> list[str]:
        """Unmount and delete; nothing to do if it does not exist. Returns the layers it used."""
        base = self.dir / container_id
        with self._container_lock(container_id):
            if os.path.lexists(base / "merged"):
                _unmount(base / "merged")
            _release_lowers(base)
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
            idmap = record.get("idmap")
            self._mount(container_id, record["chain_ids"], IdMap(**idmap) if idmap else None)
        return self._rootfs(container_id, record)

    def ensure_mounted(self, container_id: str) -> Rootfs:
        """After a reboot (or an unmount behind our back), mount the existing upper layer again."""
        with self._container_lock(container_id):
            return self._ensure_mounted(container_id)

    def idmap_problem(self) -> str | None:
        """Why this kernel and the store's filesystem cannot give a rootfs an id map, or None when they can:
        checked once by the real thing, an overlay on an idmapped clone of a scratch directory."""
        with self._lock:
            if not self._idmap_problem:
                self._idmap_problem.append(idmapping.kernel_problem(os.uname().release) or self._try_idmap())
            return self._idmap_problem[0]

    def _try_idmap(self) -> str | None:
        scratch = self.root / ".idmap-probe"
        _release_probe(scratch)  # what a crash in an earlier probe left
        want = IdMap(uid=65536 * 7, gid=65536 * 7 + 1, length=1)
        try:
            for sub in ("layer", "lower", "upper", "work", "merged"):
                (scratch / sub).mkdir(parents=True)
            (scratch / "layer" / "file").touch()
            with idmapping.user_namespace(want) as userns:
                idmapping.attach_idmapped(scratch / "layer", scratch / "lower", userns)
            _mount_overlay(scratch / "merged", f"lowerdir={scratch / 'lower'},upperdir={scratch / 'upper'},"
                                               f"workdir={scratch / 'work'}", None)
            st = os.stat(scratch / "merged" / "file")
            if (st.st_uid, st.st_gid) != (want.uid, want.gid):
                return f"an overlay on an idmapped layer shows {st.st_uid}:{st.st_gid}, not {want.uid}:{want.gid}"
            return None
        except MountError as exc:
            return f"cannot build an overlay on idmapped layers under {self.root}: {exc}"
        finally:
            _release_probe(scratch)

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
