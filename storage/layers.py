"""Unpacked layers, one directory per chain id, shared by every image that has the chain.

layers/<chain hex>/diff holds the layer's own files in overlayfs form and layer.json its facts;
l/<short> is a short symlink to the diff so that mount options for images with many layers stay
under the kernel's one-page limit (the scheme containers/storage uses, with shorter names). A layer is unpacked in a
temp directory and renamed into place, so a layer directory that exists is always complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from storage.errors import DigestMismatch
from hostos.atomicfile import atomic_write_json
from storage.fsutil import remove_tree, usage
from storage.unpack import UnpackLimits, unpack_layer

_TMP_PREFIX = ".tmp-"
LINK_DIR = "l"
LINK_LENGTH = 6  # 32**6 names; 500 of them (overlayfs' deepest stack) fit in one page of mount options
MAX_LAYERS = 500  # overlayfs refuses to stack more lower directories than this


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain ids: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + " " + diff[n])."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
        else:
            chains.append(diff_id)
    return chains


@dataclass(frozen=True)
class Layer:
    chain_id: str
    diff_id: str
    size: int     # bytes of the uncompressed tar stream
    link: str     # name under l/
    disk_bytes: int = 0   # what the unpacked files take on disk, measured once after unpacking,
    inodes: int = 0       # so that ImageFsInfo (asked every few seconds) never walks the layers


class LayerStore:
    def __init__(self, root: Path, limits: UnpackLimits = UnpackLimits()):
        self.root = Path(root)
        self.dir = self.root / "layers"
        self.links = self.root / LINK_DIR
        self.limits = limits
        self.dir.mkdir(parents=True, exist_ok=True)
        self.links.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._recover()

    def _recover(self) -> None:
        """Drop half-unpacked or half-deleted layers and links that point at nothing."""
        for name in os.listdir(self.dir):
            if name.startswith(_TMP_PREFIX):
                remove_tree(self.dir / name)
        for name in os.listdir(self.links):
            if not (self.links / name).exists():
                (self.links / name).unlink(missing_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.dir / chain_id.removeprefix("sha256:")

    def get(self, chain_id: str) -> Layer | None:
        try:
            doc = json.loads((self.path(chain_id) / "layer.json").read_text())
        except FileNotFoundError:
            return None
        return Layer(**doc)

    def all_chain_ids(self) -> set[str]:
        return {f"sha256:{name}" for name in os.listdir(self.dir) if not name.startswith(_TMP_PREFIX)}

    def ensure(self, chain_id: str, diff_id: str, blob: Path) -> tuple[Layer, bool]:
        """The layer `chain_id`, unpacking `blob` if it is not there yet; True if this call made it.
        The unpacked stream must hash to `diff_id`, else nothing is kept."""
        layer = self.get(chain_id)
        if layer is not None:
            return layer, False
        with self._guard:
            lock = self._locks[chain_id]
        with lock:
            layer = self.get(chain_id)
            if layer is not None:
                return layer, False
            tmp = self.dir / f"{_TMP_PREFIX}{os.urandom(8).hex()}"
            link_path: Path | None = None
            try:
                (tmp / "diff").mkdir(parents=True)
                stats = unpack_layer(blob, tmp / "diff", self.limits)
                if stats.diff_id != diff_id:
                    raise DigestMismatch(f"layer {blob.name[:12]}: uncompressed digest {stats.diff_id} does not "
                                         f"match {diff_id} in the image config")
                link_path = self._new_link(chain_id)
                disk_bytes, inodes = usage(tmp / "diff")
                layer = Layer(chain_id, diff_id, stats.size, link_path.name, disk_bytes, inodes)
                atomic_write_json(tmp / "layer.json", layer.__dict__, durable=False)
                os.rename(tmp, self.path(chain_id))
            except BaseException:
                if link_path is not None:
                    link_path.unlink(missing_ok=True)
                remove_tree(tmp)
                raise
            return layer, True

    def _new_link(self, chain_id: str) -> Path:
        while True:
            name = base64.b32encode(os.urandom(5)).decode()[:LINK_LENGTH]
            path = self.links / name
            try:
                os.symlink(f"../layers/{chain_id.removeprefix('sha256:')}/diff", path)
                return path
            except FileExistsError:
                continue

    def detach(self, chain_id: str) -> Path | None:
        """Make the layer disappear at once (rename), returning the directory to delete later
        outside any lock; None if it was not there."""
        layer = self.get(chain_id)
        if layer is None:
            return None
        (self.links / layer.link).unlink(missing_ok=True)
        doomed = self.dir / f"{_TMP_PREFIX}del-{os.urandom(8).hex()}"
        os.rename(self.path(chain_id), doomed)
        return doomed

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) of all unpacked layers, from what each layer recorded."""
        total_bytes = total_inodes = 0
        for chain_id in self.all_chain_ids():
            layer = self.get(chain_id)
            if layer is not None:
                total_bytes += layer.disk_bytes
                total_inodes += layer.inodes
        return total_bytes, total_inodes
