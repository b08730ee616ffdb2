"""Atomic file replacement: a reader sees the old content or the new, never a torn file.

`durable=True` adds an fsync of the file and of its directory, which survives power loss; without it a write
still survives a killed process (the page cache outlives it), so hot paths may skip the flush where a caller
allows. Temp files are named `.<name>.<pid>.<thread>.<n>.tmp` and created with O_EXCL, so concurrent writers
of one path (threads or processes) never share a temp file; a directory's owner sweeps `.*.tmp` files that a
crash left behind.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

_counter = itertools.count()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.{next(_counter)}.tmp")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True,
                       mode: int = 0o600) -> None:
    """Replace `path` with `data` through a temp file beside it and a rename."""
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: object, *, durable: bool = True) -> None:
    """`obj` as compact JSON with sorted keys (the same object always gives the same bytes)."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":"), sort_keys=True).encode(), durable=durable)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or create in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
