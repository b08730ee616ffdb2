"""Pulling: registries.conf's sources tried in turn, concurrent pulls of one name coalesced, and the install of an
image's config, layers and manifests into the store (which archive imports use too).

An image becomes visible only when its record is committed, after all its blobs and layers are in place; what a
failed install created and no one else uses is swept again at once.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from storage import reference as refs
from storage.auth import AuthFile, Credentials
from storage.content import ContentStore
from storage.errors import ImageNotFound, NoSpace, StorageError, TransientRegistryError, UnsupportedManifest
from storage.fsutil import syncfs
from storage.image_gc import Collector
from storage.image_records import ImageRecord, ImageRecords
from storage.layers import LayerStore, chain_ids as compute_chain_ids
from storage.manifest import (IMAGE_MANIFEST_TYPES, INDEX_TYPES, MAX_CONFIG_BYTES, Descriptor, Manifest,
                              choose_platform, image_record, parse_config, parse_image_manifest)
from storage.registry import RegistryClient
from storage.registry_auth import TokenCache

log = logging.getLogger("pycri.storage")

T = TypeVar("T")
# observe(kind, start, end, nbytes): a pull's blob downloads and layer unpacking, timed (wall clock seconds).
Observer = Callable[[str, float, float, int], None]
# fetch(digest, size, write): hand a blob's bytes to write, in order.
Fetch = Callable[[str, int, Callable[[bytes], object]], None]


def _retrying(fn: Callable[..., T], *args: Any) -> T:
    """Call fn, retrying transient registry failures with exponential backoff."""
    import tenacity  # here, not at import: only pulls retry, and an idle daemon need not hold it

    for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception_type(TransientRegistryError),
                                     stop=tenacity.stop_after_attempt(4),
                                     wait=tenacity.wait_exponential(multiplier=0.2, max=3.0), reraise=True):
        with attempt:
            return fn(*args)
    raise AssertionError("tenacity stopped without a result or an error")  # (reraise=True: never reached)


@contextmanager
def no_space_error(what: str, root: Path) -> Iterator[None]:
    """A full disk is a clear error of its own; whatever the operation wrote is gone by then."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{what}: no space left under {root}") from None
        raise


class Puller:
    def __init__(self, root: Path, records: ImageRecords, content: ContentStore, layers: LayerStore,
                 collector: Collector, *, auth_file: Path | None, progress_timeout: float, parallel_downloads: int,
                 durable: bool, checkpoint: Callable[[str], None]) -> None:
        self.root = root
        self.records = records
        self.content = content
        self.layers = layers
        self.collector = collector
        self.auth_file_path = auth_file
        self.progress_timeout = progress_timeout
        self.parallel_downloads = parallel_downloads
        self.durable = durable
        self.checkpoint = checkpoint  # called at named steps of a pull, for the fault-injection suite
        self._tokens = TokenCache()
        self._inflight: dict[tuple[Any, ...], Future[ImageRecord]] = {}  # under records.lock

    def pull(self, ref: str, credentials: Credentials | None = None, observe: Observer | None = None) -> ImageRecord:
        """Pull `ref` (registries.conf applies) and return its record; concurrent pulls of the same
        name coalesce into one. `observe(kind, start, end, nbytes)` hears of each blob download ("download",
        with the bytes received) and layer unpacking ("unpack") this pull did, from its worker threads."""
        candidates = self.records.candidates(ref)
        key = (tuple(str(c) for c in candidates), credentials)
        with self.records.lock:
            running = self._inflight.get(key)
            if running is None:
                mine = self._inflight[key] = Future()
        if running is not None:
            return running.result().model_copy(deep=True)
        try:
            with no_space_error(f"pull {candidates[0]}", self.root):
                record = self._pull_candidates(candidates, credentials, observe)
            mine.set_result(record)
            return record.model_copy(deep=True)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self.records.lock:
                del self._inflight[key]

    def _pull_candidates(self, candidates: list[refs.Reference], credentials: Credentials | None,
                         observe: Observer | None = None) -> ImageRecord:
        auth_file = AuthFile.load(self.auth_file_path)
        last_error: StorageError | None = None
        for ref in candidates:
            sources = self.records.registries.pull_sources(ref)
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

        record = self.install(config_desc, layer_descs, manifests, fetch, where=str(ref), observe=observe)
        return self.commit([(record, [(ref, top.digest)])])[0]

    def commit(self, entries: list[tuple[ImageRecord, list[tuple[refs.Reference, str | None]]]],
               pin: bool = False) -> list[ImageRecord]:
        """records.commit_all of installed images; if it fails, what only they used is swept."""
        try:
            return self.records.commit_all(entries, pin)
        except BaseException:
            self.collector.sweep({key for record, _ in entries for key in (*record.blobs, *record.chain_ids)})
            raise

    def forget(self, installed: list[ImageRecord]) -> None:
        """Installed images that will not be committed: release their pins and sweep what only they used."""
        pins = {key for record in installed for key in (*record.blobs, *record.chain_ids)}
        self.records.unpin(pins)
        self.collector.sweep(pins)

    def install(self, config_desc: Descriptor, layer_descs: list[Descriptor], manifests: list[Manifest],
                fetch: Fetch, *, where: str, observe: Observer | None = None) -> ImageRecord:
        """Make config, layers and manifests exist in the store; return an (uncommitted) record whose blobs and
        layers stay pinned until commit. On failure, whatever this call created and no one else uses is
        removed again."""
        if config_desc.size > MAX_CONFIG_BYTES:
            raise UnsupportedManifest(f"{where}: image config of {config_desc.size} bytes is too large")
        pins = {config_desc.digest, *(d.digest for d in layer_descs), *(m.digest for m in manifests)}
        self.records.pin(pins)
        created_chains: list[str] = []
        # Blobs are written without an fsync each: one syncfs below flushes them with the unpacked layers, before
        # the image's record (written durably) makes the image exist.
        downloaded = threading.Event()  # some blob is new

        def fetching(digest: str, size: int, write: Callable[[bytes], object]) -> None:
            downloaded.set()
            fetch(digest, size, write)

        # Layer downloads start at once, alongside the config they need only to unpack.
        config_ready: Future[Any] = Future()

        def one_layer(i: int) -> int:
            desc = layer_descs[i]
            blob = _retrying(lambda: self.content.ensure(desc.digest, desc.size,
                                                         lambda write: fetching(desc.digest, desc.size, write),
                                                         durable=False))
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
                        lambda write: fetching(config_desc.digest, config_desc.size, write), durable=False))
                    config = parse_config(self.content.read(config_desc.digest, MAX_CONFIG_BYTES), where)
                    diff_ids = config["rootfs"]["diff_ids"]
                    if len(diff_ids) != len(layer_descs):
                        raise UnsupportedManifest(f"{where}: the manifest has {len(layer_descs)} layers but the "
                                                  f"config lists {len(diff_ids)} diff ids")
                    chains = compute_chain_ids(diff_ids)
                    self.records.pin(set(chains))
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
                if not self.content.has(m.digest):
                    downloaded.set()
                    self.content.put(m.body, durable=False)
            if self.durable and (created_chains or downloaded.is_set()):
                syncfs(self.root)  # one flush for every blob and every file the unpacked layers wrote
            self.checkpoint("image.pull.after_blobs")
            image_manifests = [m for m in manifests if m.media_type in IMAGE_MANIFEST_TYPES]
            return image_record(config_desc.digest, config, chains, sum(sizes),
                                {config_desc.digest, *(d.digest for d in layer_descs), *(m.digest for m in manifests)},
                                image_manifests[-1].json() if image_manifests else None)
        except BaseException:
            self.records.unpin(pins)
            self.collector.sweep(pins)
            raise
