"""Reading a small file that someone else named (a request, a config directory) without blocking: a FIFO or a
device under that name would hold the reading thread forever, so only a regular file is read."""

from __future__ import annotations

import os
import stat


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most `limit` + 1 bytes of the regular file at `path` (the caller tells "too large" by the length);
    OSError if it cannot be opened or is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: opening a FIFO does not wait
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        return f.read(limit + 1)
