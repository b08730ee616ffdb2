"""The image store: pulls, image records, lookups, removal, GC, and container root filesystems.

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
import errno
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pydantic import BaseModel, Field

from hostos.atomicfile import atomic_write_json
from storage import reference as refs
from storage.auth import AuthFile, Credentials
from storage.content import ContentStore
from storage.errors import ImageInUse, ImageNotFound, InvalidReference, NoSpace, StorageError, UnsupportedManifest
from storage.fsutil import remove_tree, syncfs, usage
from storage.idmap import IdMap
from storage.layers import MAX_LAYERS, LayerStore, chain_ids as compute_chain_ids
from storage.registries_conf import RegistriesConfig
from storage.registry import (IMAGE_MANIFEST_TYPES, INDEX_TYPES, Manifest, RegistryClient, TokenCache,
                              TransientRegistryError, choose_platform)
from storage.rootfs import ImageVolume, Rootfs, RootfsManager
from storage.unpack import UnpackLimits

log = logging.getLogger("pycri.storage")

T = TypeVar("T")


def _reclaim(path: Path) -> None:
    try:
        remove_tree(path)
    except OSError as exc:  # left for the sweep at the next start
        log.warning("deleting removed layer %s: %s", path, exc)


MAX_CONFIG_BYTES = 8 << 20
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
_MIN_BARE_PREFIX = 12
# observe(kind, start, end, nbytes): a pull's blob downloads and layer unpacking, timed (wall clock seconds).
Observer = Callable[[str, float, float, int], None]


class ImageRecord(BaseModel):
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


@dataclass
class FsUsage:
    """One ImageFsInfo entry: a directory, what it holds, and its use."""
    kind: str          # "image" or "container"
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass
class GCReport:
    blobs_removed: list[str] = field(default_factory=list)
    layers_removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str


def _retrying(fn: Callable[..., T], *args: Any) -> T:
    """Call fn, retrying transient registry failures with exponential backoff."""
    import tenacity  # here, not at import: only pulls retry, and an idle daemon need not hold it

    for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception_type(TransientRegistryError),
                                     stop=tenacity.stop_after_attempt(4),
                                     wait=tenacity.wait_exponential(multiplier=0.2, max=3.0), reraise=True):
        with attempt:
            return fn(*args)
    raise AssertionError("tenacity stopped without a result or an error")  # (reraise=True: never reached)


class ImageStore:
    """Thread-safe; every public method is blocking (call it from a worker thread in async code)."""

    def __init__(self, root: Path, registries: RegistriesConfig | None = None, auth_file: Path | None = None,
                 progress_timeout: float = 60.0, *, parallel_downloads: int = 4,
                 limits: UnpackLimits = UnpackLimits(), durable: bool = True,
                 checkpoint: Callable[[str], None] = lambda name: None, background_reclaim: bool = False):
        """`background_reclaim`: removed layers' trees are deleted by a worker thread after the removal returns
        (the daemon's choice: RemoveImage then costs a rename instead of ~400 unlinks for busybox); they are
        renamed away first, so no one sees them, and a crash leaves them to the sweep at the next start."""
        self.root = Path(root)
        self.checkpoint = checkpoint  # called at named steps of a pull, for the fault-injection suite
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registries = registries or RegistriesConfig()
        self.auth_file_path = auth_file
        self.progress_timeout = progress_timeout
        self.durable = durable
        self.parallel_downloads = parallel_downloads
        self.content = ContentStore(self.root)
        self.layers = LayerStore(self.root, limits)
        self.rootfs = RootfsManager(self.root, self.layers)
        self.records_dir = self.root / "images"
        self.records_dir.mkdir(exist_ok=True)
        self._tokens = TokenCache()
        self._lock = threading.RLock()          # the in-memory index, pins and in-flight pulls
        self._persist_lock = threading.Lock()   # record files: one writer at a time, in order
        self._records: dict[str, ImageRecord] = {}
        self.generation = 0  # counts changes to the records, for readers that keep answers made from them
        self._pins: dict[str, int] = {}
        self._inflight: dict[tuple[Any, ...], Future[ImageRecord]] = {}
        self._reclaimer = ThreadPoolExecutor(1, thread_name_prefix="reclaim") if background_reclaim else None
        self._load()
        self._sweep(self.content.all_digests() | self.layers.all_chain_ids())

    # ---- records -----------------------------------------------------------------------

    def _load(self) -> None:
        for path in sorted(self.records_dir.iterdir()):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a temp file of an interrupted atomic write
                continue
            try:
                record = ImageRecord.model_validate_json(path.read_bytes())
            except ValueError as exc:
                log.error("ignoring unreadable image record %s: %s", path, exc)
                continue
            self._records[record.id] = record
        owner: dict[str, ImageRecord] = {}
        for record in sorted(self._records.values(), key=lambda r: r.updated_ns):
            for tag in record.repo_tags:
                previous = owner.get(tag)
                if previous is not None and tag in previous.repo_tags:
                    previous.repo_tags.remove(tag)  # a crash between moving a tag and saving its old owner
                owner[tag] = record

    def _record_path(self, image_id: str) -> Path:
        return self.records_dir / f"{image_id.removeprefix('sha256:')}.json"

    def _save(self, snapshot: dict[str, Any]) -> None:
        atomic_write_json(self._record_path(snapshot['id']), snapshot,
                          durable=self.durable)

    # ---- lookups -----------------------------------------------------------------------

    def _candidates(self, text: str) -> list[refs.Reference]:
        """The names `text` may mean: a short name is tried against each search registry."""
        if refs.is_short_name(text):
            return [refs.parse(text, default_domain=d) for d in self.registries.search_domains()]
        return [refs.parse(text)]

    def _lookup(self, text: str) -> ImageRecord | None:
        full_id = refs.parse_image_id(text)
        if full_id and full_id in self._records:
            return self._records[full_id]
        try:
            candidates = self._candidates(text)
        except InvalidReference:
            candidates = []
        for ref in candidates:
            key = str(ref.with_digest(ref.digest)) if ref.digest else str(ref)
            for record in self._records.values():
                if key in (record.repo_digests if ref.digest else record.repo_tags):
                    return record
        match = _HEX_PREFIX_RE.fullmatch(text)
        # a bare prefix needs 12 digits (what crictl prints): "beef" must stay an image name
        if match and (text.startswith("sha256:") or len(text) >= _MIN_BARE_PREFIX):
            found = [r for r in self._records.values() if r.id[7:].startswith(match.group(1))]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InvalidReference(f"image id prefix {text!r} is ambiguous ({len(found)} images match)")
        return None

    def get(self, name_or_id: str) -> ImageRecord | None:
        """By name:tag, name@digest, id, or unique id prefix; None if no image matches."""
        with self._lock:
            record = self._lookup(name_or_id)
            return record.model_copy(deep=True) if record else None

    def list(self, filter_ref: str | None = None) -> list[ImageRecord]:
        with self._lock:
            if filter_ref:
                record = self._lookup(filter_ref)
                return [record.model_copy(deep=True)] if record else []
            return [r.model_copy(deep=True) for r in self._records.values()]

    def answer(self, name_or_id: str | None, render: Callable[[ImageRecord], T]) -> builtins.list[T]:
        """render(record) of the image `name_or_id` names (none or one), or of every image when it is None, under
        the index lock and without copies: for readers that only turn records into answers (and must not keep
        them). An ambiguous id prefix raises InvalidReference, as in get."""
        with self._lock:
            if name_or_id is None:
                return [render(r) for r in self._records.values()]
            record = self._lookup(name_or_id)
            return [render(record)] if record else []

    # ---- pulling -----------------------------------------------------------------------

    def pull(self, ref: str, credentials: Credentials | None = None, observe: Observer | None = None) -> ImageRecord:
        """Pull `ref` (registries.conf applies) and return its record; concurrent pulls of the same
        name coalesce into one. `observe(kind, start, end, nbytes)` hears of each blob download ("download",
        with the bytes received) and layer unpacking ("unpack") this pull did, from its worker threads."""
        candidates = self._candidates(ref)
        key = (tuple(str(c) for c in candidates), credentials)
        with self._lock:
            running = self._inflight.get(key)
            if running is None:
                mine = self._inflight[key] = Future()
        if running is not None:
            return running.result().model_copy(deep=True)
        try:
            with self._no_space_error(f"pull {candidates[0]}"):
                record = self._pull_candidates(candidates, credentials, observe)
            mine.set_result(record)
            return record.model_copy(deep=True)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[key]

    @contextmanager
    def _no_space_error(self, what: str) -> Iterator[None]:
        """A full disk is a clear error of its own; whatever the operation wrote is gone by then."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"{what}: no space left under {self.root}") from None
            raise

    def _pull_candidates(self, candidates: builtins.list[refs.Reference], credentials: Credentials | None,
                         observe: Observer | None = None) -> ImageRecord:
        auth_file = AuthFile.load(self.auth_file_path)
        last_error: StorageError | None = None
        for ref in candidates:
            sources = self.registries.pull_sources(ref)
            for source in sources:
                client = RegistryClient(source, credentials=credentials, auth_file=auth_file,
                                        token_cache=self._tokens, progress_timeout=self.progress_timeout)
                try:
                    return self._pull_from(client, ref, observe)
                except StorageError as exc:
                    if source is sources[-1] and ref is candidates[-1]:
                        raise type(exc)(f"pull {ref}: {exc}") from None
                    log.info("pull %s from %s failed, trying the next source: %s", ref, client.where, exc)
                    last_error = exc
        raise last_error or ImageNotFound(f"no source to pull {candidates[0]} from")

    def _pull_from(self, client: RegistryClient, ref: refs.Reference, observe: Observer | None = None) -> ImageRecord:
        top = _retrying(client.get_manifest, ref.reference)
        manifests = [top]
        manifest = top
        if top.media_type in INDEX_TYPES:
            desc = choose_platform(top.json(), f"{ref}")
            digest = refs.validate_digest(str(desc.get("digest", "")))
            manifest = _retrying(client.get_manifest, digest)
            if manifest.media_type not in IMAGE_MANIFEST_TYPES:
                raise UnsupportedManifest(f"{ref}: index entry {digest} is not an image manifest")
            manifests.append(manifest)
        config_desc, layer_descs = parse_image_manifest(manifest, str(ref))

        def fetch(desc_digest: str, size: int, write: Callable[[bytes], object]) -> None:
            if observe is None:
                client.fetch_blob(desc_digest, size, write)
                return
            received = [0]

            def counting(chunk: bytes) -> object:
                received[0] += len(chunk)
                return write(chunk)

            start = time.time()
            try:
                client.fetch_blob(desc_digest, size, counting)
            finally:
                observe("download", start, time.time(), received[0])

        record = self._install(config_desc, layer_descs, manifests, fetch, where=str(ref), observe=observe)
        return self._commit(record, [(ref, top.digest)])

    def _install(self, config_desc: Descriptor, layer_descs: builtins.list[Descriptor],
                 manifests: builtins.list[Manifest],
                 fetch: Callable[[str, int, Callable[[bytes], object]], None], *, where: str,
                 observe: Observer | None = None) -> ImageRecord:
        """Make config, layers and manifests exist in the store; return an (uncommitted) record.
        On failure, whatever this call created and no one else uses is removed again."""
        if config_desc.size > MAX_CONFIG_BYTES:
            raise UnsupportedManifest(f"{where}: image config of {config_desc.size} bytes is too large")
        pins = {config_desc.digest, *(d.digest for d in layer_descs), *(m.digest for m in manifests)}
        self._pin(pins)
        created_chains: list[str] = []
        # Layer downloads start at once, alongside the config they need only to unpack.
        config_ready: Future[Any] = Future()

        def one_layer(i: int) -> int:
            desc = layer_descs[i]
            blob = _retrying(lambda: self.content.ensure(desc.digest, desc.size,
                                                         lambda write: fetch(desc.digest, desc.size, write),
                                                         durable=self.durable))
            diff_ids, chains = config_ready.result()
            start = time.time()
            layer, made = self.layers.ensure(chains[i], diff_ids[i], blob)
            if made and observe is not None:
                observe("unpack", start, time.time(), 0)
            if made:
                created_chains.append(chains[i])
            return layer.size

        try:
            with ThreadPoolExecutor(max(1, min(self.parallel_downloads, len(layer_descs))),
                                    thread_name_prefix="pull") as pool:
                futures = [pool.submit(one_layer, i) for i in range(len(layer_descs))]
                try:
                    _retrying(lambda: self.content.ensure(
                        config_desc.digest, config_desc.size,
                        lambda write: fetch(config_desc.digest, config_desc.size, write), durable=self.durable))
                    config = _parse_config(self.content.read(config_desc.digest, MAX_CONFIG_BYTES), where)
                    diff_ids = config["rootfs"]["diff_ids"]
                    if len(diff_ids) != len(layer_descs):
                        raise UnsupportedManifest(f"{where}: the manifest has {len(layer_descs)} layers but the "
                                                  f"config lists {len(diff_ids)} diff ids")
                    chains = compute_chain_ids(diff_ids)
                    self._pin(set(chains))
                    pins |= set(chains)
                    config_ready.set_result((diff_ids, chains))
                    sizes = [f.result() for f in futures]
                except BaseException as exc:
                    if not config_ready.done():
                        config_ready.set_exception(exc)
                    for f in futures:
                        f.cancel()
                    raise
            for m in manifests:
                self.content.put(m.body, durable=False)
            if self.durable and created_chains:
                syncfs(self.root)  # one flush for every file the unpacked layers wrote
            self.checkpoint("image.pull.after_blobs")
            conf = config.get("config") or {}
            return ImageRecord(
                id=config_desc.digest, size=sum(sizes), user=str(conf.get("User") or ""),
                env=_strings(conf.get("Env")), entrypoint=_strings(conf.get("Entrypoint")),
                cmd=_strings(conf.get("Cmd")), working_dir=str(conf.get("WorkingDir") or ""),
                volumes=sorted((conf.get("Volumes") or {}).keys()) if isinstance(conf.get("Volumes"), dict) else [],
                stop_signal=str(conf.get("StopSignal") or ""),
                labels=({str(k): str(v) for k, v in (conf.get("Labels") or {}).items()}
                        if isinstance(conf.get("Labels"), dict) else {}),
                chain_ids=chains, created=str(config.get("created") or ""),
                blobs=sorted({config_desc.digest, *(d.digest for d in layer_descs), *(m.digest for m in manifests)}))
        except BaseException:
            self._unpin(pins)
            self._sweep(pins)
            raise

    def _commit(self, record: ImageRecord, names: builtins.list[tuple[refs.Reference, str | None]],
                pin: bool = False) -> ImageRecord:
        return self._commit_all([(record, names)], pin)[0]

    def _commit_all(self, entries: builtins.list[tuple[ImageRecord, builtins.list[tuple[refs.Reference, str | None]]]],
                    pin: bool = False) -> builtins.list[ImageRecord]:
        """Publish each installed record under its names, (reference, manifest digest) pairs: a tagged
        name adds its tag (moving it off any image that had it), a digest adds name@digest; `pin` pins
        the images for good. All or nothing: if a record file cannot be written, the index and the files
        written are put back and what only the new records used is swept. Releases _install's pins.
        Records are written outside the index lock, so lookups never wait on the disk."""
        pins = {key for record, _ in entries for key in (*record.blobs, *record.chain_ids)}
        before: dict[str, ImageRecord | None] = {}   # each touched record as it was, None if new
        written: builtins.list[str] = []
        committed = False
        try:
            with self._persist_lock:
                with self._lock:
                    changed: dict[str, ImageRecord] = {}
                    for record, names in entries:
                        existing = self._records.get(record.id)
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
                            for other in self._records.values():
                                if other.id != record.id and tag in other.repo_tags:
                                    before.setdefault(other.id, other.model_copy(deep=True))
                                    other.repo_tags.remove(tag)
                                    other.updated_ns = time.time_ns()
                                    changed[other.id] = other
                            if tag not in record.repo_tags:
                                record.repo_tags.append(tag)
                        record.updated_ns = time.time_ns()
                        self._records[record.id] = record
                    self.generation += 1
                    snapshots = [r.model_dump() for r in changed.values()]
                    results = [self._records[record.id].model_copy(deep=True) for record, _ in entries]
                try:
                    for snapshot in snapshots:
                        self._save(snapshot)
                        written.append(snapshot["id"])
                except BaseException:
                    self._restore(before, written)
                    raise
            committed = True
            return results
        finally:
            self._unpin(pins)
            if not committed:
                self._sweep(pins)

    def _restore(self, before: dict[str, ImageRecord | None], written: builtins.list[str]) -> None:
        """Put the index back as `before` says and rewrite the record files already `written`."""
        with self._lock:
            for image_id, old in before.items():
                if old is None:
                    self._records.pop(image_id, None)
                else:
                    self._records[image_id] = old
            self.generation += 1
        for image_id in written:
            old = before.get(image_id)
            try:
                if old is None:
                    self._record_path(image_id).unlink(missing_ok=True)
                else:
                    self._save(old.model_dump())
            except OSError as exc:
                log.error("could not restore image record %s after a failed commit: %s", image_id, exc)

    # ---- pins, removal, GC -------------------------------------------------------------

    def _pin(self, keys: set[str]) -> None:
        with self._lock:
            for key in keys:
                self._pins[key] = self._pins.get(key, 0) + 1

    def _unpin(self, keys: set[str]) -> None:
        with self._lock:
            for key in keys:
                left = self._pins.get(key, 0) - 1
                if left > 0:
                    self._pins[key] = left
                else:
                    self._pins.pop(key, None)

    def verify(self) -> builtins.list[str]:
        """After an unclean shutdown: drop blobs whose bytes no longer match their digest, layers
        without their metadata, and images missing any of what they need. Returns what it did."""
        done: list[str] = []
        with self._lock:
            for digest in sorted(self.content.all_digests()):
                if not self.content.verify(digest):
                    self.content.delete(digest)
                    done.append(f"removed blob {digest}: its bytes do not match the digest")
            for chain_id in sorted(self.layers.all_chain_ids()):
                if self.layers.get(chain_id) is None:
                    remove_tree(self.layers.path(chain_id))  # its short link dangles and goes at the next start
                    done.append(f"removed layer {chain_id}: its metadata is missing")
            for record in list(self._records.values()):
                missing = [b for b in record.blobs if not self.content.has(b)] + \
                          [c for c in record.chain_ids if self.layers.get(c) is None]
                if missing:
                    del self._records[record.id]
                    self.generation += 1
                    (self._record_path(record.id)).unlink(missing_ok=True)
                    done.append(f"dropped image {record.id} ({', '.join(record.repo_tags) or 'untagged'}): "
                                f"missing {', '.join(missing)}; pull it again")
        self._sweep(self.content.all_digests() | self.layers.all_chain_ids())
        return done

    def _referenced(self) -> set[str]:
        used: set[str] = set(self._pins)
        for record in self._records.values():
            used.update(record.blobs)
            used.update(record.chain_ids)
        used.update(self.rootfs.referenced_chain_ids())
        return used

    def _sweep(self, candidates: set[str]) -> GCReport:
        """Delete the blobs and layers among `candidates` that nothing references or pins."""
        report = GCReport()
        doomed: list[Path] = []
        with self._lock:
            used = self._referenced()
            for key in sorted(candidates - used):
                if self.content.has(key):
                    self.content.delete(key)
                    report.blobs_removed.append(key)
                path = self.layers.detach(key)
                if path is not None:
                    doomed.append(path)
                    report.layers_removed.append(key)
        for path in doomed:
            if self._reclaimer is not None:
                self._reclaimer.submit(_reclaim, path)
            else:
                remove_tree(path)
        return report

    def remove(self, name_or_id: str, in_use: Callable[[str], bool] = lambda image_id: False) -> bool:
        """Remove the image (all its tags) unless a container uses it; False if there was none."""
        with self._persist_lock, self._lock:
            record = self._lookup(name_or_id)
            if record is None:
                return False
            if in_use(record.id):
                raise ImageInUse(f"image {name_or_id} ({record.id}) is in use by a container")
            users = self.rootfs.volume_users(record.id)
            if users:
                raise ImageInUse(f"image {name_or_id} ({record.id}) is mounted as an image volume by container "
                                 f"{users[0]}")
            (self._record_path(record.id)).unlink(missing_ok=True)
            del self._records[record.id]
            self.generation += 1
        self._sweep(set(record.blobs) | set(record.chain_ids))
        return True

    def gc(self, in_use: Callable[[str], bool] = lambda image_id: False) -> GCReport:
        """Remove blobs and layers no image, container or pull references. Images themselves stay
        (kubelet decides which images go); `in_use` is accepted for the contract's symmetry."""
        del in_use
        return self._sweep(self.content.all_digests() | self.layers.all_chain_ids())

    def fs_info(self) -> builtins.list[FsUsage]:
        blobs_bytes, blobs_inodes = usage(self.content.blobs)
        layer_bytes, layer_inodes = self.layers.usage()
        c_bytes, c_inodes = self.rootfs.usage()
        return [FsUsage("image", str(self.root), blobs_bytes + layer_bytes, blobs_inodes + layer_inodes),
                FsUsage("container", str(self.rootfs.dir), c_bytes, c_inodes)]

    # ---- archives ----------------------------------------------------------------------

    def import_archive(self, path: Path, pin: bool = False) -> builtins.list[ImageRecord]:
        """Load every image of an OCI layout or docker-archive, all or none; `pin` marks them pinned."""
        from storage.archive import read_archive
        installed: builtins.list[tuple[ImageRecord, builtins.list[tuple[refs.Reference, str | None]]]] = []
        with self._no_space_error(f"import {path}"):
            try:
                with read_archive(Path(path)) as archive:
                    for image in archive.images():
                        record = self._install(image.config, image.layers, image.manifests, image.fetch,
                                               where=f"{path}:{image.where}")
                        digest = image.manifests[0].digest if image.manifests else None
                        installed.append((record, [(tag, digest) for tag in image.tags]))
            except BaseException:
                pins = {key for record, _ in installed for key in (*record.blobs, *record.chain_ids)}
                self._unpin(pins)  # _install's, which a commit would have released
                self._sweep(pins)
                raise
            return self._commit_all(installed, pin)

    # ---- root filesystems --------------------------------------------------------------

    def create_rootfs(self, container_id: str, image_id: str, idmap: IdMap | None = None,
                      volume_images: Sequence[str] = ()) -> Rootfs:
        """Mount a new root for the container, and the root filesystems of `volume_images` read-only as its image
        volumes (with `idmap`, the images' files are its root's: see idmap_problem). Their layers are pinned
        meanwhile so that a removal of an image cannot delete them before the rootfs record names them."""
        with self._lock:
            record = self._lookup(image_id)
            if record is None:
                raise ImageNotFound(f"image {image_id} not found")
            volumes = []
            for name in volume_images:
                found = self._lookup(name)
                if found is None:
                    raise ImageNotFound(f"image {name} of an image volume is not in the store: pull it first")
                volumes.append(ImageVolume(found.id, list(found.chain_ids)))
            pins = set(record.chain_ids) | {c for v in volumes for c in v.chain_ids}
            self._pin(pins)
        try:
            return self.rootfs.create(container_id, record.id, record.chain_ids, idmap, volumes)
        finally:
            self._unpin(pins)

    def idmap_problem(self) -> str | None:
        """Why root filesystems cannot be idmapped here (kernel, filesystem), or None; probed once."""
        return self.rootfs.idmap_problem()

    def rootfs_ids(self) -> builtins.list[str]:
        """Containers that have a root filesystem here (for reconciliation at start)."""
        return sorted(self.rootfs.referenced_ids())

    def remove_rootfs(self, container_id: str) -> None:
        """Unmount and delete the container's root; layers of an image removed meanwhile go too."""
        self._sweep(set(self.rootfs.remove(container_id)))

    def unmount_rootfs(self, container_id: str) -> None:
        self.rootfs.unmount(container_id)

    def ensure_rootfs_mounted(self, container_id: str) -> Rootfs:
        return self.rootfs.ensure_mounted(container_id)

    def writable_layer_usage(self, container_id: str) -> tuple[int, int]:
        return self.rootfs.writable_usage(container_id)


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return []


def descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise UnsupportedManifest(f"{where}: descriptor is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UnsupportedManifest(f"{where}: descriptor needs a digest and a non-negative size: {raw!r}"[:300])
    refs.validate_digest(digest)
    if not digest.startswith("sha256:"):
        raise UnsupportedManifest(f"{where}: digest algorithm of {digest} is not supported")
    return Descriptor(digest, size, str(raw.get("mediaType") or ""))


def parse_image_manifest(manifest: Manifest, where: str) -> tuple[Descriptor, list[Descriptor]]:
    doc = manifest.json()
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UnsupportedManifest(f"{where}: manifest {manifest.digest} has no layers list")
    if len(layers) > MAX_LAYERS:
        raise UnsupportedManifest(f"{where}: {len(layers)} layers; overlayfs stacks at most {MAX_LAYERS}")
    return descriptor(doc.get("config"), where), [descriptor(layer, where) for layer in layers]


def _parse_config(data: bytes, where: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(data)
        diff_ids = config["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError("diff_ids is not a list")
        for diff_id in diff_ids:
            refs.validate_digest(diff_id)
    except (ValueError, KeyError, TypeError, InvalidReference) as exc:
        raise UnsupportedManifest(f"{where}: invalid image config: {exc}") from None
    if config.get("os", "linux") != "linux":
        raise UnsupportedManifest(f"{where}: image is for os {config.get('os')!r}, not linux")
    return config
