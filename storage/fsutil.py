"""Small filesystem helpers shared by the store: syncfs, safe removal, usage counting (atomic writes: hostos)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hostos import libc


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding `path` (one syscall instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.LIBC.syncfs(fd) != 0:
            raise libc.last_error("syncfs", path)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a file or a whole tree without following symlinks; a missing path is fine."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.lexists(path):
        shutil.rmtree(path, onerror=_ignore_missing)


def _ignore_missing(func: object, failed: object, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) used under `path`, counting each hard-linked inode once, never following links."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, len(seen)
