"""What the streaming server needs from the runtime core, and the requests it keeps behind tokens.

The server only knows these types; ``cri/core/streams/`` implements ``StreamingBackend`` over the container
core, and tests implement it in a few lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


class InputStream(Protocol):
    async def read(self, n: int = ...) -> bytes:
        """Up to n bytes; b"" at end of input."""


class OutputStream(Protocol):
    async def write(self, data: bytes) -> None:
        """Send data to the client; raises once the client is gone."""


class StreamingBackend(Protocol):
    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: InputStream | None,
                   stdout: OutputStream | None, stderr: OutputStream | None,
                   resize: AsyncIterator[TerminalSize] | None) -> int:
        """Run cmd in the container wired to the streams; return its exit code.

        Cancellation means the client went away: the backend must stop the process and release everything.
        """

    async def attach(self, container_id: str, tty: bool, stdin: InputStream | None,
                     stdout: OutputStream | None, stderr: OutputStream | None,
                     resize: AsyncIterator[TerminalSize] | None) -> None:
        """Wire the streams to the container's main process until it exits or stdin ends."""

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to port on localhost inside the sandbox's network namespace."""


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest
