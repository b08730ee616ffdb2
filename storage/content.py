"""The content-addressed blob store: blobs/sha256/<hex>, written atomically after verification.

Writers stream into ingest/<random> and rename into place only when the digest and size match,
so a blob that exists is always whole and correct. Concurrent writers of one digest serialise on
a per-digest lock and the second finds the blob already there.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from storage.errors import DigestMismatch
from storage.fsutil import remove_tree
from storage.reference import validate_digest


class ContentStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest = self.root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        remove_tree(self.ingest)  # leftovers of a killed pull: never whole, never referenced
        self.ingest.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def path(self, digest: str) -> Path:
        validate_digest(digest)
        algorithm, _, hex_part = digest.partition(":")
        if algorithm != "sha256":
            raise DigestMismatch(f"unsupported digest algorithm in {digest}")
        return self.blobs / hex_part

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def read(self, digest: str, max_bytes: int = 16 << 20) -> bytes:
        with open(self.path(digest), "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DigestMismatch(f"blob {digest} is larger than {max_bytes} bytes")
        return data

    @contextmanager
    def lock(self, digest: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks[digest]
        with lock:
            yield

    def ensure(self, digest: str, size: int, fill: Callable[[Callable[[bytes], object]], None], *,
               durable: bool = True) -> Path:
        """Make blob `digest` exist, calling fill(write) to produce its bytes if it does not.
        The bytes are verified here as well, whatever `fill` checked."""
        target = self.path(digest)
        if target.exists():
            return target
        with self.lock(digest):
            if target.exists():
                return target
            fd, tmp = _mkstemp(self.ingest)
            try:
                hasher = hashlib.sha256()
                written = 0

                def write(chunk: bytes) -> None:
                    nonlocal written
                    written += len(chunk)
                    hasher.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]

                fill(write)
                if written != size or f"sha256:{hasher.hexdigest()}" != digest:
                    raise DigestMismatch(f"blob {digest}: got {written} bytes with digest sha256:{hasher.hexdigest()}, "
                                         f"expected {size} bytes")
                if durable:
                    os.fsync(fd)
                os.close(fd)
                fd = -1
                os.rename(tmp, target)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                os.unlink(tmp)
                raise
        return target

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store small bytes we already hold (manifests, configs); returns their digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        def fill(write: Callable[[bytes], object]) -> None:
            write(data)

        self.ensure(digest, len(data), fill, durable=durable)
        return digest

    def verify(self, digest: str) -> bool:
        """Whether the blob's bytes still hash to its name (a power cut can leave a file torn)."""
        hasher = hashlib.sha256()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
        return digest == f"sha256:{hasher.hexdigest()}"

    def all_digests(self) -> set[str]:
        return {f"sha256:{name}" for name in os.listdir(self.blobs) if len(name) == 64}

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


def _mkstemp(directory: Path) -> tuple[int, str]:
    name = os.path.join(directory, os.urandom(12).hex())
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
