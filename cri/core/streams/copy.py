"""What exec and attach sessions share: copying between the client's streams and the command's, resizes, and the
end of the output copies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any

from cri.oci.conmon import ConmonError
from cri.streaming.backend import InputStream, OutputStream, TerminalSize

COPY_CHUNK = 32 << 10
# After the command exits, how long output may keep flowing (a background child holding the pipe) before we stop.
OUTPUT_GRACE = 2.0


async def copy_out(read: Callable[[int], Awaitable[bytes]], sink: OutputStream) -> None:
    while chunk := await read(COPY_CHUNK):
        await sink.write(chunk)


async def copy_in(stdin: InputStream, write: Callable[[bytes], Awaitable[None]],
                   end: Callable[[], Awaitable[None]] | None = None) -> None:
    while chunk := await stdin.read(COPY_CHUNK):
        await write(chunk)
    if end is not None:
        await end()


async def apply_resizes(resize: AsyncIterator[TerminalSize], apply: Callable[[TerminalSize], None]) -> None:
    async for size in resize:
        with suppress(OSError, ConmonError):
            apply(size)


async def finish_copies(copies: list[asyncio.Task[Any]]) -> None:
    """Let the output copies end on their own (EOF), but not wait forever on a pipe a background child holds."""
    if copies:
        await asyncio.wait(copies, timeout=OUTPUT_GRACE)
        for task in copies:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
