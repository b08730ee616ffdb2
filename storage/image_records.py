"""Image records: one JSON file per image under images/, the in-memory index over them, name and id lookups, tag
moves, and the pins that keep a pull's or a rootfs's blobs and layers from the sweep until a record names them.

One re-entrant lock guards the index and the pins (the sweep in image_gc.py decides under it); record files are
written under a second lock, outside the first, so lookups never wait on the disk.
"""

from __future__ import annotations

import builtins
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from hostos.atomicfile import atomic_write_json
from storage import reference as refs
from storage.errors import InvalidReference
from storage.registries_conf import RegistriesConfig

log = logging.getLogger("pycri.storage")

T = TypeVar("T")

_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
_MIN_BARE_PREFIX = 12


class ImageRecord(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start
    id: str                                   # sha256:<config digest>
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    size: int = 0                             # uncompressed bytes of all layers
    user: str = ""
    env: list[str] = Field(default_factory=list)
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    working_dir: str = ""
    volumes: list[str] = Field(default_factory=list)
    stop_signal: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    chain_ids: list[str] = Field(default_factory=list)
    created: str = ""                         # from the config, RFC 3339
    blobs: list[str] = Field(default_factory=list)   # manifests, config, layers: kept while the image exists
    updated_ns: int = 0                       # the newest record wins a tag found on two records
    pinned: bool = False                      # kept from kubelet's image GC (`pycri image import --pin`)
    annotations: dict[str, str] = Field(default_factory=dict)  # the image manifest's (a checkpoint image's mark)


class ImageRecords:
    def __init__(self, root: Path, registries: RegistriesConfig, durable: bool) -> None:
        self.dir = root / "images"
        self.dir.mkdir(exist_ok=True)
        self.registries = registries  # search registries for short names (a reload replaces it)
        self.durable = durable
        self.lock = threading.RLock()           # the in-memory index and the pins
        self.persist_lock = threading.Lock()    # record files: one writer at a time, in order
        self.by_id: dict[str, ImageRecord] = {}
        self.generation = 0  # counts changes to the records, for readers that keep answers made from them
        self.pins: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a temp file of an interrupted atomic write
                continue
            try:
                record = ImageRecord.model_validate_json(path.read_bytes())
            except ValueError as exc:
                log.error("ignoring unreadable image record %s: %s", path, exc)
                continue
            self.by_id[record.id] = record
        owner: dict[str, ImageRecord] = {}
        for record in sorted(self.by_id.values(), key=lambda r: r.updated_ns):
            for tag in record.repo_tags:
                previous = owner.get(tag)
                if previous is not None and tag in previous.repo_tags:
                    previous.repo_tags.remove(tag)  # a crash between moving a tag and saving its old owner
                owner[tag] = record

    def _path(self, image_id: str) -> Path:
        return self.dir / f"{image_id.removeprefix('sha256:')}.json"

    def _save(self, snapshot: dict[str, Any]) -> None:
        atomic_write_json(self._path(snapshot['id']), snapshot, durable=self.durable)

    def drop(self, record: ImageRecord) -> None:
        """Forget the image and delete its record file (under the lock)."""
        self._path(record.id).unlink(missing_ok=True)
        del self.by_id[record.id]
        self.generation += 1

    # ---- lookups -----------------------------------------------------------------------

    def candidates(self, text: str) -> list[refs.Reference]:
        """The names `text` may mean: a short name is tried against each search registry."""
        if refs.is_short_name(text):
            return [refs.parse(text, default_domain=d) for d in self.registries.search_domains()]
        return [refs.parse(text)]

    def lookup(self, text: str) -> ImageRecord | None:
        """The record itself (under the lock): by name:tag, name@digest, id, or unique id prefix."""
        full_id = refs.parse_image_id(text)
        if full_id and full_id in self.by_id:
            return self.by_id[full_id]
        try:
            candidates = self.candidates(text)
        except InvalidReference:
            candidates = []
        for ref in candidates:
            key = str(ref.with_digest(ref.digest)) if ref.digest else str(ref)
            for record in self.by_id.values():
                if key in (record.repo_digests if ref.digest else record.repo_tags):
                    return record
        match = _HEX_PREFIX_RE.fullmatch(text)
        # a bare prefix needs 12 digits (what crictl prints): "beef" must stay an image name
        if match and (text.startswith("sha256:") or len(text) >= _MIN_BARE_PREFIX):
            found = [r for r in self.by_id.values() if r.id[7:].startswith(match.group(1))]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InvalidReference(f"image id prefix {text!r} is ambiguous ({len(found)} images match)")
        return None

    def get(self, name_or_id: str) -> ImageRecord | None:
        with self.lock:
            record = self.lookup(name_or_id)
            return record.model_copy(deep=True) if record else None

    def list(self, filter_ref: str | None = None) -> list[ImageRecord]:
        with self.lock:
            if filter_ref:
                record = self.lookup(filter_ref)
                return [record.model_copy(deep=True)] if record else []
            return [r.model_copy(deep=True) for r in self.by_id.values()]

    def answer(self, name_or_id: str | None, render: Callable[[ImageRecord], T]) -> builtins.list[T]:
        with self.lock:
            if name_or_id is None:
                return [render(r) for r in self.by_id.values()]
            record = self.lookup(name_or_id)
            return [render(record)] if record else []

    # ---- publishing --------------------------------------------------------------------

    def commit_all(self, entries: builtins.list[tuple[ImageRecord, builtins.list[tuple[refs.Reference, str | None]]]],
                   pin: bool = False) -> builtins.list[ImageRecord]:
        """Publish each installed record under its names, (reference, manifest digest) pairs: a tagged
        name adds its tag (moving it off any image that had it), a digest adds name@digest; `pin` pins
        the images for good. All or nothing: if a record file cannot be written, the index and the files
        written are put back (the caller sweeps what only the new records used). Releases the install's pins.
        Records are written outside the index lock, so lookups never wait on the disk."""
        pins = {key for record, _ in entries for key in (*record.blobs, *record.chain_ids)}
        before: dict[str, ImageRecord | None] = {}   # each touched record as it was, None if new
        written: builtins.list[str] = []
        try:
            with self.persist_lock:
                with self.lock:
                    changed: dict[str, ImageRecord] = {}
                    for record, names in entries:
                        existing = self.by_id.get(record.id)
                        before.setdefault(record.id, existing and existing.model_copy(deep=True))
                        if existing is not None:
                            record.repo_tags, record.repo_digests = (list(existing.repo_tags),
                                                                     list(existing.repo_digests))
                            record.blobs = sorted(set(existing.blobs) | set(record.blobs))
                        record.pinned = pin or (existing is not None and existing.pinned)
                        changed[record.id] = record
                        for ref, digest in names:
                            if digest and str(ref.with_digest(digest)) not in record.repo_digests:
                                record.repo_digests.append(str(ref.with_digest(digest)))
                            if not ref.tag or ref.digest:
                                continue
                            tag = str(ref)
                            for other in self.by_id.values():
                                if other.id != record.id and tag in other.repo_tags:
                                    before.setdefault(other.id, other.model_copy(deep=True))
                                    other.repo_tags.remove(tag)
                                    other.updated_ns = time.time_ns()
                                    changed[other.id] = other
                            if tag not in record.repo_tags:
                                record.repo_tags.append(tag)
                        record.updated_ns = time.time_ns()
                        self.by_id[record.id] = record
                    self.generation += 1
                    snapshots = [r.model_dump() for r in changed.values()]
                    results = [self.by_id[record.id].model_copy(deep=True) for record, _ in entries]
                try:
                    for snapshot in snapshots:
                        self._save(snapshot)
                        written.append(snapshot["id"])
                except BaseException:
                    self._restore(before, written)
                    raise
            return results
        finally:
            self.unpin(pins)

    def _restore(self, before: dict[str, ImageRecord | None], written: builtins.list[str]) -> None:
        """Put the index back as `before` says and rewrite the record files already `written`."""
        with self.lock:
            for image_id, old in before.items():
                if old is None:
                    self.by_id.pop(image_id, None)
                else:
                    self.by_id[image_id] = old
            self.generation += 1
        for image_id in written:
            old = before.get(image_id)
            try:
                if old is None:
                    self._path(image_id).unlink(missing_ok=True)
                else:
                    self._save(old.model_dump())
            except OSError as exc:
                log.error("could not restore image record %s after a failed commit: %s", image_id, exc)

    # ---- pins --------------------------------------------------------------------------

    def pin(self, keys: set[str]) -> None:
        with self.lock:
            for key in keys:
                self.pins[key] = self.pins.get(key, 0) + 1

    def unpin(self, keys: set[str]) -> None:
        with self.lock:
            for key in keys:
                left = self.pins.get(key, 0) - 1
                if left > 0:
                    self.pins[key] = left
                else:
                    self.pins.pop(key, None)
