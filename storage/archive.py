"""Image archives: an OCI image layout (directory or tarball, what `ctr images export` writes)
or a docker-archive tarball (`docker save`), as `kind load` and `ctr images import` feed them.

Only names inside the archive are looked up (never paths on the host), every blob is read
through the content store's digest check, and JSON documents are size-capped.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from storage import reference as refs
from storage.errors import ArchiveError, InvalidReference
from storage.manifest import (DOCKER_MANIFEST, IMAGE_MANIFEST_TYPES, INDEX_TYPES, MAX_MANIFEST_BYTES, Descriptor,
                              Manifest, choose_platform, parse_image_manifest)

_CHUNK = 1 << 20
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


@dataclass
class ArchiveImage:
    where: str
    config: Descriptor
    layers: list[Descriptor]
    manifests: list[Manifest]                 # the top-level one first; empty for docker-archive
    tags: list[refs.Reference]
    fetch: Callable[[str, int, Callable[[bytes], object]], None] = field(repr=False)


class _Files:
    """Read named files from a directory or a (possibly compressed) tarball, one reader at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if not path.is_dir():
            try:
                self._tar = tarfile.open(path, "r:*")
                for member in self._tar:
                    self._members[member.name.removeprefix("./")] = member
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ArchiveError(f"{path}: not a readable tar archive: {exc}") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def exists(self, name: str) -> bool:
        if self._tar is None:
            return (self.path / name).is_file()
        return name in self._members

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with self._lock:
            if self._tar is None:
                if ".." in name.split("/"):
                    raise ArchiveError(f"{self.path}: entry name {name!r} leaves the layout")
                try:
                    f: IO[bytes] | None = open(self.path / name, "rb")
                except OSError as exc:
                    raise ArchiveError(f"{self.path}: missing {name}: {exc.strerror}") from None
            else:
                member = self._members.get(name)
                if member is None:
                    raise ArchiveError(f"{self.path}: missing {name}")
                try:
                    f = self._tar.extractfile(member)
                except (tarfile.TarError, KeyError) as exc:
                    raise ArchiveError(f"{self.path}: cannot read {name}: {exc}") from None
                if f is None:
                    raise ArchiveError(f"{self.path}: {name} is not a file")
            assert f is not None
            try:
                yield f
            finally:
                f.close()

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{self.path}: {name} is larger than {limit} bytes")
        return data

    def copy(self, name: str, write: Callable[[bytes], object]) -> None:
        with self.open(name) as f:
            while chunk := f.read(_CHUNK):
                write(chunk)


def _json(files: _Files, name: str) -> object:
    try:
        return json.loads(files.read(name))
    except ValueError as exc:
        raise ArchiveError(f"{files.path}: {name} is not valid JSON: {exc}") from None


def _blob_name(digest: str) -> str:
    refs.validate_digest(digest)
    algorithm, _, hex_part = digest.partition(":")
    return f"blobs/{algorithm}/{hex_part}"


def _name_of(annotations: dict[str, Any]) -> refs.Reference | None:
    """The image name an index entry carries; a bare tag ("latest") names no repository."""
    for key in _NAME_ANNOTATIONS:
        value = (annotations or {}).get(key)
        if value and ("/" in value or ":" in value or "@" in value):
            try:
                ref = refs.parse(value)
            except InvalidReference:
                continue
            return None if ref.digest else ref
    return None


class Archive:
    def __init__(self, path: Path):
        self.files = _Files(path)
        self.path = path

    def _fetch_blob(self, digest: str, size: int, write: Callable[[bytes], object]) -> None:
        self.files.copy(_blob_name(digest), write)

    def _manifest(self, digest: str) -> Manifest:
        body = self.files.read(_blob_name(digest))
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise ArchiveError(f"{self.path}: manifest {digest} has digest {actual}")
        doc = Manifest(body, "", digest).json()
        media_type = doc.get("mediaType") or ("application/vnd.oci.image.index.v1+json" if "manifests" in doc
                                              else "application/vnd.oci.image.manifest.v1+json")
        return Manifest(body, media_type, digest)

    def images(self) -> list[ArchiveImage]:
        if self.files.exists("index.json"):
            return self._oci_images()
        if self.files.exists("manifest.json"):
            return self._docker_images()
        raise ArchiveError(f"{self.path}: neither an OCI layout (index.json) nor a docker archive (manifest.json)")

    def _oci_images(self) -> list[ArchiveImage]:
        index = _json(self.files, "index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ArchiveError(f"{self.path}: index.json has no manifests list")
        found = []
        for entry in index["manifests"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
                raise ArchiveError(f"{self.path}: malformed index.json entry {entry!r}"[:300])
            where = f"{self.path.name}:{entry['digest'][:19]}"
            top = self._manifest(entry["digest"])
            manifests = [top]
            manifest = top
            if top.media_type in INDEX_TYPES:
                chosen = choose_platform(top.json(), where)
                manifest = self._manifest(str(chosen.get("digest", "")))
                manifests.append(manifest)
            if manifest.media_type not in IMAGE_MANIFEST_TYPES:
                raise ArchiveError(f"{where}: unsupported manifest type {manifest.media_type!r}")
            config, layers = parse_image_manifest(manifest, where)
            name = _name_of(entry.get("annotations") or {})
            found.append(ArchiveImage(where, config, layers, manifests, [name] if name else [], self._fetch_blob))
        return found

    def _docker_images(self) -> list[ArchiveImage]:
        doc = _json(self.files, "manifest.json")
        if not isinstance(doc, list):
            raise ArchiveError(f"{self.path}: manifest.json is not a list")
        found = []
        for item in doc:
            if (not isinstance(item, dict) or not isinstance(item.get("Config"), str)
                    or not isinstance(item.get("Layers"), list)):
                raise ArchiveError(f"{self.path}: malformed manifest.json entry")
            config_bytes = self.files.read(item["Config"], 8 << 20)
            config = Descriptor("sha256:" + hashlib.sha256(config_bytes).hexdigest(), len(config_bytes), "")
            names = {config.digest: item["Config"]}
            layers = []
            for layer_name in item["Layers"]:
                hasher, size = hashlib.sha256(), 0

                def measure(chunk: bytes) -> None:
                    nonlocal size
                    size += len(chunk)
                    hasher.update(chunk)  # noqa: B023  (called only within this iteration)

                self.files.copy(str(layer_name), measure)
                desc = Descriptor("sha256:" + hasher.hexdigest(), size, DOCKER_MANIFEST)
                names[desc.digest] = str(layer_name)
                layers.append(desc)
            tags = []
            for tag in item.get("RepoTags") or []:
                try:
                    tags.append(refs.parse(str(tag)))
                except InvalidReference as exc:
                    raise ArchiveError(f"{self.path}: {exc}") from None

            def fetch(digest: str, size: int, write: Callable[[bytes], object],
                      names: dict[str, str] = names) -> None:
                self.files.copy(names[digest], write)

            found.append(ArchiveImage(f"{self.path.name}:{item['Config']}", config, layers, [], tags, fetch))
        return found


@contextmanager
def read_archive(path: Path) -> Iterator[Archive]:
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    archive = Archive(path)
    try:
        yield archive
    finally:
        archive.files.close()
