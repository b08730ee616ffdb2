"""Our own streaming clients (SPDY/3.1 and WebSocket) for tests and benchmarks.

They behave like client-go: the SPDY client creates its streams one by one, waiting for each reply, and reads
the outcome from the error stream; the WebSocket client uses numbered channels.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData
from wsproto.events import Request, TextMessage

from cri.streaming import spdy, tunnel
from cri.streaming.websocket import decode_message, encode_message


class HttpError(Exception):
    def __init__(self, status: int, headers: dict[str, list[str]], body: bytes):
        super().__init__(f"HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status, self.headers, self.body = status, headers, body


async def _open(url: str, tls: ssl.SSLContext | None = None):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                   ssl=tls if parts.scheme == "https" else None, limit=1 << 20)
    return parts, reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.lower(), []).append(value.strip())
    body = b""
    if status != 101:
        length = int(headers.get("content-length", ["0"])[0])
        body = await reader.readexactly(length)
    return status, headers, body


class SpdystreamLikeConnection(spdy.SpdyConnection):
    """Behaves like Go's spdystream, kubelet's and critest's client: it never announces a window and never
    sends WINDOW_UPDATE, so the server must not wait on flow control with it."""

    def start(self):
        self._announced = True  # as if our windows had gone out: they never will
        return super().start()

    def _consumed(self, stream, size):
        stream._changed.set()
        self._forget_if_done(stream)


async def spdy_connect(url: str, protocols: list[str], tls: ssl.SSLContext | None = None,
                       spdystream_like: bool = False) -> tuple[spdy.SpdyConnection, str]:
    """Upgrade to SPDY/3.1 offering protocols; the connection and the version the server chose."""
    parts, reader, writer = await _open(url, tls)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status, headers, body = await _read_response(reader)
    if status != 101:
        writer.close()
        raise HttpError(status, headers, body)
    conn = (SpdystreamLikeConnection if spdystream_like else spdy.SpdyConnection)(reader, writer, server=False)
    conn.start()
    return conn, headers.get("x-stream-protocol-version", [""])[0]


@dataclass
class ExecResult:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    protocol: str = ""

    @property
    def status(self) -> dict:
        return json.loads(self.error)

    @property
    def exit_code(self) -> int:
        """As client-go reads it: 0 on Success, the ExitCode cause on NonZeroExitCode."""
        status = self.status
        if status["status"] == "Success":
            return 0
        if status.get("reason") == "NonZeroExitCode":
            return int(next(c["message"] for c in status["details"]["causes"] if c.get("reason") == "ExitCode"))
        raise RuntimeError(status.get("message"))


class SpdySession:
    """An exec/attach session over SPDY with the client's streams open; feed stdin, read output."""

    def __init__(self, conn: spdy.SpdyConnection, protocol: str, streams: dict[str, spdy.SpdyStream]):
        self.conn, self.protocol, self.streams = conn, protocol, streams

    @classmethod
    async def open(cls, url: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
                   tty: bool = False, protocols: tuple[str, ...] = ("v4.channel.k8s.io",),
                   spdystream_like: bool = False) -> SpdySession:
        conn, protocol = await spdy_connect(url, list(protocols), spdystream_like=spdystream_like)
        kinds = ["error"] + [k for k, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not tty),
                                              ("resize", tty and protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io")))
                             if on]
        streams = {}
        for kind in kinds:
            stream = await conn.open_stream({"streamtype": kind})
            await stream.wait_reply()
            streams[kind] = stream
        await streams["error"].close()  # clients never write on it
        return cls(conn, protocol, streams)

    async def write_stdin(self, data: bytes) -> None:
        await self.streams["stdin"].write(data)

    async def close_stdin(self) -> None:
        await self.streams["stdin"].close()

    async def resize(self, width: int, height: int) -> None:
        await self.streams["resize"].write(json.dumps({"Width": width, "Height": height}).encode() + b"\n")

    async def read_until(self, needle: bytes, kind: str = "stdout", limit: int = 1 << 20) -> bytes:
        buffer = b""
        while needle not in buffer:
            chunk = await self.streams[kind].read()
            if not chunk or len(buffer) > limit:
                raise EOFError(f"{kind} ended before {needle!r}; got {buffer!r}")
            buffer += chunk
        return buffer

    async def finish(self) -> ExecResult:
        """Read stdout, stderr and the status to their ends, then close."""
        async def drain(kind: str) -> bytes:
            return await self.streams[kind].read_all(1 << 30) if kind in self.streams else b""
        try:
            out, err, status = await asyncio.gather(drain("stdout"), drain("stderr"), drain("error"))
        finally:
            await self.conn.close()
        return ExecResult(out, err, status, self.protocol)


async def spdy_exec(url: str, stdin: bytes | None = None, **options) -> ExecResult:
    session = await SpdySession.open(url, stdin=stdin is not None, **options)

    async def feed() -> None:
        if stdin is not None:
            await session.write_stdin(stdin)
            await session.close_stdin()

    # Like kubectl, write stdin while reading output: a command may not read more until its output is read.
    results = await asyncio.gather(feed(), session.finish())
    return results[1]


class SpdyPortForward:
    """Port-forward over SPDY: each ``connect`` opens an error/data stream pair with a new requestid."""

    def __init__(self, conn: spdy.SpdyConnection):
        self.conn = conn
        self._next_request = 0

    @classmethod
    async def open(cls, url: str, spdystream_like: bool = False) -> SpdyPortForward:
        conn, _ = await spdy_connect(url, ["portforward.k8s.io"], spdystream_like=spdystream_like)
        return cls(conn)

    @classmethod
    async def open_over_websocket(cls, url: str) -> SpdyPortForward:
        """The same protocol tunnelled through WebSocket binary messages, as kubectl 1.30+ tries first."""
        reader, writer, ws, protocol = await websocket_handshake(url, [tunnel.PROTOCOL])
        if protocol != tunnel.PROTOCOL:
            raise HttpError(0, {}, f"server chose {protocol!r}".encode())
        pipe = tunnel.WebSocketTunnel(ws, reader, writer)
        pipe.take_events()  # SPDY bytes that arrived with the handshake response
        conn = spdy.SpdyConnection(pipe.reader, pipe.writer, server=False)
        conn.start()
        return cls(conn)

    async def connect(self, port: int) -> tuple[spdy.SpdyStream, spdy.SpdyStream]:
        """(data, error) streams for one forwarded connection."""
        request_id = str(self._next_request)
        self._next_request += 1
        headers = {"port": str(port), "requestid": request_id}
        error = await self.conn.open_stream({"streamtype": "error", **headers})
        await error.wait_reply()
        await error.close()
        data = await self.conn.open_stream({"streamtype": "data", **headers})
        await data.wait_reply()
        return data, error

    async def close(self) -> None:
        await self.conn.close()


async def websocket_handshake(url: str, protocols: list[str]):
    """(reader, writer, wsproto connection, chosen subprotocol) after a WebSocket upgrade; HttpError if refused."""
    parts, reader, writer = await _open(url)
    ws = WSConnection(ConnectionType.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(ws.send(Request(host=parts.netloc, target=target, subprotocols=protocols)))
    while True:
        data = await reader.read(65536)
        if not data:
            raise HttpError(0, {}, b"connection closed during handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return reader, writer, ws, event.subprotocol or ""
            if isinstance(event, RejectConnection):
                body = b""
                if event.has_body:
                    for more in ws.events():
                        if isinstance(more, RejectData):
                            body += more.data
                writer.close()
                raise HttpError(event.status_code, {}, body)


@dataclass
class WebSocketClient:
    """Numbered channels over a WebSocket, as kubectl's WebSocket executor uses them."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ws: WSConnection
    protocol: str
    inbox: dict[int, bytearray] = field(default_factory=dict)
    closed: bool = False

    @classmethod
    async def open(cls, url: str, protocols: list[str]) -> WebSocketClient:
        reader, writer, ws, protocol = await websocket_handshake(url, protocols)
        client = cls(reader, writer, ws, protocol)
        client._process_events()  # messages that arrived with the handshake response
        return client

    @property
    def base64(self) -> bool:
        return "base64" in self.protocol

    async def send(self, channel: int, data: bytes) -> None:
        self.writer.write(self.ws.send(encode_message(channel, data, self.base64)))
        await self.writer.drain()

    async def close_channel(self, channel: int) -> None:
        """v5's close signal."""
        self.writer.write(self.ws.send(BytesMessage(bytes([255, channel]))))
        await self.writer.drain()

    async def receive(self) -> bool:
        """Process one read from the socket into the channel inboxes; False once the connection is over."""
        if self.closed:
            return False
        data = await self.reader.read(65536)
        if not data:
            self.closed = True
            return False
        self.ws.receive_data(data)
        self._process_events()
        return not self.closed

    def _process_events(self) -> None:
        parts: list = []
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                self.writer.write(self.ws.send(event.response()))
                self.closed = True
            elif isinstance(event, Ping):
                self.writer.write(self.ws.send(event.response()))
            elif isinstance(event, (BytesMessage, TextMessage)):
                parts.append(event.data)
                if event.message_finished:
                    joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    parts = []
                    decoded = decode_message(joined, self.base64)
                    if decoded:
                        self.inbox.setdefault(decoded[0], bytearray()).extend(decoded[1])

    async def read_until(self, channel: int, size: int) -> bytes:
        while len(self.inbox.get(channel, b"")) < size:
            if not await self.receive():
                break
        return bytes(self.inbox.get(channel, b""))

    async def run_to_close(self) -> dict[int, bytes]:
        while await self.receive():
            pass
        self.writer.close()
        return {k: bytes(v) for k, v in self.inbox.items()}

    async def close(self) -> None:
        self.writer.close()
