"""Reading a checkpoint archive (cri/oci/checkpoint.py's layout, which CRI-O writes too) for a restore.

The archive is untrusted input: it is unpacked with the layer unpacker (storage/unpack.py: no '..', no symlink
followed out of the target, sizes and entry counts capped), then checked: config.dump and spec.dump are small JSON
objects, checkpoint/ holds CRIU's inventory.img, deleted.files is a list of paths. rootfs-diff.tar is unpacked
later, the same way, into the new container's upper layer (see storage/rootfs.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import HostileLayer
from storage.unpack import UnpackLimits, unpack_layer

from .checkpoint import CHECKPOINT_DIR, CONFIG_DUMP, DELETED_FILES, ROOTFS_DIFF, SPEC_DUMP

MAX_DUMP_BYTES = 4 << 20          # config.dump, spec.dump, deleted.files
ARCHIVE_LIMITS = UnpackLimits(max_bytes=64 << 30, max_entries=1_000_000)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """The archive is not a usable checkpoint; the message says what is wrong with it."""


@dataclass(frozen=True)
class Checkpoint:
    dir: Path                       # where it was unpacked
    config: dict[str, Any]          # config.dump
    spec: dict[str, Any]            # spec.dump: the checkpointed container's OCI spec
    deleted: list[str]              # deleted.files: absolute paths removed from the image

    @property
    def images(self) -> Path:
        """CRIU's image files, what `runtime restore --image-path` reads."""
        return self.dir / CHECKPOINT_DIR

    @property
    def rootfs_diff(self) -> Path | None:
        path = self.dir / ROOTFS_DIFF
        return path if path.exists() else None

    @property
    def image_name(self) -> str:
        """The image the container ran (config.dump's rootfsImageName, else rootfsImage, else rootfsImageRef)."""
        for key in ("rootfsImageName", "rootfsImage", "rootfsImageRef"):
            value = self.config.get(key)
            if isinstance(value, str) and value:
                return value
        return ""


def unpack(archive: Path, dest: Path, limits: UnpackLimits = ARCHIVE_LIMITS) -> Checkpoint:
    """Unpack `archive` into the empty directory `dest` and check it; ArchiveError names what is wrong. `dest` is
    the caller's to delete, also on error."""
    try:
        unpack_layer(archive, dest, limits)
    except HostileLayer as e:
        raise ArchiveError(f"unsafe or corrupt archive: {e}") from None
    return check(dest)


def copy_from_image(layers: list[Path], dest: Path) -> Checkpoint:
    """A checkpoint OCI image (CRI-O's: one layer holding the archive's files) copied into the empty directory
    `dest` and checked: only regular files are copied, from the layer's top and its checkpoint/ directory, so no
    link or device of the image is followed or opened."""
    if len(layers) != 1:
        raise ArchiveError(f"a checkpoint image has one layer holding the archive's files; this one has {len(layers)}")
    layer = layers[0]
    for name in (CONFIG_DUMP, SPEC_DUMP, DELETED_FILES, ROOTFS_DIFF):
        if os.path.lexists(layer / name):
            _copy_regular(layer / name, dest / name)
    if stat.S_ISDIR(_lstat(layer / CHECKPOINT_DIR).st_mode):
        (dest / CHECKPOINT_DIR).mkdir()
        for entry in os.scandir(layer / CHECKPOINT_DIR):
            _copy_regular(Path(entry.path), dest / CHECKPOINT_DIR / entry.name)
    return check(dest)


def _copy_regular(source: Path, target: Path) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ArchiveError(f"{source.name} cannot be read: {e.strerror} (a link?)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArchiveError(f"{source.name} is not a regular file")
        with open(fd, "rb", closefd=False) as src, open(target, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    finally:
        os.close(fd)


def check(dest: Path) -> Checkpoint:
    """The checkpoint in `dest`, once its files pass the checks (ArchiveError names the first that does not)."""
    config = _json(dest, CONFIG_DUMP, dict)
    spec = _json(dest, SPEC_DUMP, dict)
    if not isinstance(spec.get("process"), dict) or not isinstance(spec.get("root"), dict):
        raise ArchiveError(f"{SPEC_DUMP} is not an OCI runtime spec (no process or root)")
    deleted = _json(dest, DELETED_FILES, list) if os.path.lexists(dest / DELETED_FILES) else []
    for path in deleted:
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            raise ArchiveError(f"{DELETED_FILES} holds {str(path)[:200]!r}, not an absolute path without '..'")
    try:  # lstat: checkpoint/ itself may be a link
        images = stat.S_ISDIR(os.lstat(dest / CHECKPOINT_DIR).st_mode)
        images = images and stat.S_ISREG(os.lstat(dest / CHECKPOINT_DIR / "inventory.img").st_mode)
    except FileNotFoundError:
        images = False
    if not images:
        raise ArchiveError(f"{CHECKPOINT_DIR}/ holds no CRIU images (inventory.img missing)")
    if os.path.lexists(dest / ROOTFS_DIFF) and not stat.S_ISREG(_lstat(dest / ROOTFS_DIFF).st_mode):
        raise ArchiveError(f"{ROOTFS_DIFF} is not a regular file")
    checkpoint = Checkpoint(dest, config, spec, deleted)
    if not checkpoint.image_name:
        raise ArchiveError(f"{CONFIG_DUMP} names no image (rootfsImageName, rootfsImage or rootfsImageRef)")
    return checkpoint


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise ArchiveError(f"{path.name} is missing from the archive") from None


def _json(dest: Path, name: str, kind: type) -> Any:
    path = dest / name
    st = _lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveError(f"{name} is not a regular file")
    if st.st_size > MAX_DUMP_BYTES:
        raise ArchiveError(f"{name} is {st.st_size} bytes, more than {MAX_DUMP_BYTES}")
    try:
        value = json.loads(path.read_bytes())
    except ValueError as e:
        raise ArchiveError(f"{name} is not JSON: {e}") from None
    if not isinstance(value, kind):
        raise ArchiveError(f"{name} holds a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def remove_deleted(root: Path, paths: list[str]) -> None:
    """Delete `paths` (absolute inside the container) from the mounted rootfs `root`: each parent directory is
    opened from `root` one component at a time without following a symlink, so no path leaves the rootfs."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for path in paths:
            parts = [p for p in path.split("/") if p not in ("", ".")]
            if parts:
                _remove_at(root_fd, parts)
    finally:
        os.close(root_fd)


def _remove_at(root_fd: int, parts: list[str]) -> None:
    fds: list[int] = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            try:
                parent = os.open(part, _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return  # gone already, or reached through a link: nothing of the image's to delete there
                raise
            fds.append(parent)
        try:
            st = os.lstat(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    finally:
        for fd in fds:
            os.close(fd)
