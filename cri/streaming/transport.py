"""What the SPDY and WebSocket connections share: the read side of a stream or channel over buffered chunks, and
the last step of closing a connection's transport."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol


class ByteReader(Protocol):
    """The read side a SPDY connection runs over: asyncio's StreamReader, or a WebSocket tunnel's (tunnel.py)."""

    async def readexactly(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    """The write side a SPDY connection runs over: asyncio's StreamWriter, or a WebSocket tunnel's."""

    @property
    def transport(self) -> asyncio.WriteTransport: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


async def next_chunk(chunks: deque[bytes], n: int, ended: Callable[[], bool], changed: asyncio.Event) -> bytes:
    """Up to n bytes of the first buffered chunk (the rest of it stays first in line), waiting on `changed` while
    none is buffered; b"" once none is and `ended()`. The read side of a SPDY stream and of a WebSocket channel."""
    while not chunks:
        if ended():
            return b""
        changed.clear()
        await changed.wait()
    chunk = chunks.popleft()
    if len(chunk) > n:
        chunks.appendleft(chunk[n:])
        chunk = chunk[:n]
    return chunk


async def close_transport(writer: ByteWriter, task: asyncio.Task[None] | None) -> None:
    """Wait up to 5 s for the transport to close, else abort it; then end the connection's reader task (unless
    that is the caller). The last step of closing a SPDY or WebSocket connection."""
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.transport.abort()
    if task is not None and task is not asyncio.current_task():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
