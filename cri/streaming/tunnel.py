"""SPDY over WebSocket: the port-forward transport kubectl 1.30+ tries first ("SPDY/3.1+portforward.k8s.io").

The WebSocket carries the raw SPDY byte stream in binary messages, in both directions; there is no HTTP upgrade
inside.  ``WebSocketTunnel`` turns one upgraded connection back into the (reader, writer) pair that
``SpdyConnection`` runs over, so port-forward itself is the same code as over plain SPDY.  The reader pulls
messages off the socket only when SPDY wants more bytes, so backpressure reaches the peer through TCP.
"""

from __future__ import annotations

import asyncio
from collections import deque

from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

PROTOCOL = "SPDY/3.1+portforward.k8s.io"


class _TunnelReader:
    def __init__(self, tunnel: WebSocketTunnel) -> None:
        self._tunnel = tunnel
        self._buffer = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            payload = await self._tunnel.next_payload()
            if not payload:
                raise asyncio.IncompleteReadError(bytes(self._buffer), n)
            self._buffer += payload
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


class _TunnelWriter:
    """What SpdyConnection writes goes out as one binary message per write."""

    def __init__(self, tunnel: WebSocketTunnel) -> None:
        self._tunnel = tunnel
        self.transport = tunnel.raw_writer.transport

    def write(self, data: bytes) -> None:
        if self._tunnel.ws.state == ConnectionState.OPEN:
            self._tunnel.raw_writer.write(self._tunnel.ws.send(BytesMessage(bytes(data))))

    async def drain(self) -> None:
        await self._tunnel.raw_writer.drain()

    def close(self) -> None:
        self._tunnel.close()

    async def wait_closed(self) -> None:
        await self._tunnel.raw_writer.wait_closed()


class WebSocketTunnel:
    """A byte stream over an open WebSocket; pings are answered and a close ends the stream.

    ``ws`` is a wsproto connection in its open state: the server's low-level Connection, or a client's
    WSConnection after its handshake.
    """

    def __init__(self, ws: Connection | WSConnection, raw_reader: asyncio.StreamReader,
                 raw_writer: asyncio.StreamWriter) -> None:
        self.ws, self.raw_reader, self.raw_writer = ws, raw_reader, raw_writer
        self.reader = _TunnelReader(self)
        self.writer = _TunnelWriter(self)
        self._payloads: deque[bytes] = deque()
        self._ended = False

    async def next_payload(self) -> bytes:
        """The next message's bytes; b"" once the peer closed or left."""
        while not self._payloads and not self._ended:
            data = await self.raw_reader.read(65536)
            if not data:
                self._ended = True
                break
            self.ws.receive_data(data)
            self.take_events()
        return self._payloads.popleft() if self._payloads else b""

    def take_events(self) -> None:
        """Move what wsproto has parsed into the payload queue (also for bytes that came with a handshake)."""
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                if self.ws.state == ConnectionState.REMOTE_CLOSING:
                    self.raw_writer.write(self.ws.send(event.response()))
                self._ended = True
            elif isinstance(event, Ping):
                self.raw_writer.write(self.ws.send(event.response()))
            elif isinstance(event, BytesMessage) and event.data:
                self._payloads.append(bytes(event.data))
            elif isinstance(event, TextMessage) and event.data:
                self._payloads.append(event.data.encode())

    def close(self) -> None:
        if self.ws.state == ConnectionState.OPEN:
            self.raw_writer.write(self.ws.send(CloseConnection(code=1000)))
        self.raw_writer.close()
