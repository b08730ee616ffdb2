"""Reading a small file that someone else named (a request, a config directory) without blocking for good: a FIFO
or a device under that name would hold the reading thread forever, and the daemon has only a few."""

from __future__ import annotations

import os
import select
import stat
import time


def read_regular(path: str | os.PathLike[str], limit: int, fifo_wait: float = 0.0) -> bytes:
    """At most `limit` + 1 bytes of the file at `path` (the caller tells "too large" by the length). A regular file
    is read at once; a FIFO only with `fifo_wait` > 0, until its writer closes it, for at most that many seconds;
    OSError for anything else, or a FIFO that did not end in time."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: opening a FIFO does not wait
    with open(fd, "rb", buffering=0) as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return f.read(limit + 1) or b""
        if not stat.S_ISFIFO(mode) or fifo_wait <= 0:
            raise OSError("not a regular file")
        return _read_fifo(fd, limit, fifo_wait)


def _read_fifo(fd: int, limit: int, wait: float) -> bytes:
    deadline = time.monotonic() + wait
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = bytearray()
    while len(data) <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(f"a FIFO whose writer did not finish within {wait:g}s")
        if not poller.poll(left * 1000):  # (no writer yet: Linux reports nothing, not a hang-up)
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:  # its writer closed it
            break
        data += chunk
    return bytes(data[:limit + 1])
