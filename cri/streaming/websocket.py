"""The WebSocket variants: numbered channels (first byte of each message) for exec, attach and port-forward.

Framing is wsproto's (sans-I/O); this module adds the k8s channel layer: binary channels, the base64 text
variant, and v5's close signal (a message on channel 255 naming the channel the client will not write again).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import deque

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from .backend import AttachRequest, ExecRequest, PortForwardRequest, StreamingBackend
from .portforward import forward
from .remotecommand import SessionStreams, StatusSink, resize_events, run_session
from .spdy_frames import StreamClosed
from .transport import close_transport, next_chunk

log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
# Preference order when a client offers several; "" is a client that offers none (binary, v1 semantics).
REMOTECOMMAND_PROTOCOLS = (V5, V4, V4_BASE64, V1, V1_BASE64)
PORTFORWARD_PROTOCOLS = (V4, V4_BASE64)
_BASE64 = {V4_BASE64, V1_BASE64}
_JSON_STATUS = {V5, V4, V4_BASE64}

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE_SIGNAL = 255
MAX_MESSAGE = 16 << 20
CHANNEL_BUFFER = 1 << 20


def encode_message(channel: int, data: bytes, b64: bool) -> BytesMessage | TextMessage:
    if b64:
        return TextMessage(chr(ord("0") + channel) + base64.b64encode(data).decode())
    return BytesMessage(bytes([channel]) + data)


def decode_message(payload: bytes | str, b64: bool) -> tuple[int, bytes] | None:
    """(channel, data) of one client message; None for empty or undecodable messages."""
    if not payload:
        return None
    if b64:
        text = payload if isinstance(payload, str) else payload.decode("latin-1")
        try:
            return ord(text[0]) - ord("0"), base64.b64decode(text[1:], validate=True)
        except (binascii.Error, ValueError):
            return None
    raw = payload if isinstance(payload, bytes) else payload.encode()
    return raw[0], raw[1:]


class _Input:
    """What the client sends on one channel, readable like a stream; ends at the close signal or disconnect."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.closed = False
        self.changed = asyncio.Event()

    async def read(self, n: int = 65536) -> bytes:
        chunk = await next_chunk(self.chunks, n, lambda: self.closed, self.changed)
        if chunk:
            self.buffered -= len(chunk)
            self.changed.set()  # wakes the connection's reader if it paused on this channel's full buffer
        return chunk


class _Output:
    def __init__(self, conn: WebSocketChannels, channel: int) -> None:
        self.conn, self.channel = conn, channel

    async def write(self, data: bytes) -> None:
        await self.conn.send(self.channel, bytes(data))

    async def close(self) -> None:
        """Channels have no half-close before v5; the session ends by closing the connection."""


class WebSocketChannels:
    """One upgraded WebSocket connection carrying numbered channels."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 idle_timeout: float | None = None) -> None:
        self._reader, self._writer = reader, writer
        self.protocol = protocol
        self._b64 = protocol in _BASE64
        self._ws = Connection(ConnectionType.SERVER)
        self._inputs: dict[int, _Input] = {}
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._parts: list[bytes | bytearray | str] = []  # the fragments of one message, all text or all bytes
        self._parts_size = 0
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._task: asyncio.Task[None] | None = None

    def input(self, channel: int) -> _Input:
        return self._inputs.setdefault(channel, _Input())

    def output(self, channel: int) -> _Output:
        return _Output(self, channel)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="websocket-channels")

    async def send(self, channel: int, data: bytes) -> None:
        if self.done.done():
            raise StreamClosed("websocket connection closed")
        self._writer.write(self._ws.send(encode_message(channel, data, self._b64)))
        self._last_activity = self._loop.time()
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self._finish()
            raise StreamClosed("websocket connection closed") from e

    async def close(self, code: int = 1000) -> None:
        if not self.done.done() and self._ws.state == ConnectionState.OPEN:
            self._writer.write(self._ws.send(CloseConnection(code=code)))
        self._finish()
        await close_transport(self._writer, self._task)

    async def _run(self) -> None:
        watchdog = asyncio.create_task(self._idle_watchdog(self._idle_timeout)) if self._idle_timeout else None
        try:
            while not self.done.done():
                data = await self._reader.read(65536)
                if not data:
                    break
                self._last_activity = self._loop.time()
                self._ws.receive_data(data)
                if not await self._dispatch():
                    break
        except (ConnectionError, OSError):
            pass
        except Exception as e:  # noqa: BLE001 - wsproto raises its own errors for protocol violations
            log.info("websocket stream ended: %s", e)
        finally:
            if watchdog:
                watchdog.cancel()
            self._finish()

    async def _dispatch(self) -> bool:
        for event in self._ws.events():
            if isinstance(event, CloseConnection):
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    self._writer.write(self._ws.send(event.response()))
                return False
            if isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, (BytesMessage, TextMessage)):
                self._parts.append(event.data)
                self._parts_size += len(event.data)
                if self._parts_size > MAX_MESSAGE:
                    return False
                if event.message_finished:
                    message = ("".join(p for p in self._parts if isinstance(p, str)) if isinstance(event, TextMessage)
                               else b"".join(p for p in self._parts if not isinstance(p, str)))
                    self._parts, self._parts_size = [], 0
                    await self._deliver(message)
        return True

    async def _deliver(self, message: bytes | str) -> None:
        decoded = decode_message(message, self._b64)
        if decoded is None:
            return
        channel, data = decoded
        if channel == CLOSE_SIGNAL and self.protocol == V5:
            if data and data[0] in self._inputs:
                ended = self._inputs[data[0]]
                ended.closed = True
                ended.changed.set()
            return
        target = self._inputs.get(channel)
        if target is None or target.closed or not data:
            return  # a channel this session does not read
        target.chunks.append(data)
        target.buffered += len(data)
        target.changed.set()
        while target.buffered > CHANNEL_BUFFER and not self.done.done():
            target.changed.clear()
            await target.changed.wait()

    async def _idle_watchdog(self, timeout: float) -> None:
        while not self.done.done():
            remaining = self._last_activity + timeout - self._loop.time()
            if remaining <= 0:
                self._finish()
                return
            await asyncio.sleep(remaining)

    def _finish(self) -> None:
        if self.done.done():
            return
        for channel in self._inputs.values():
            channel.closed = True
            channel.changed.set()
        self._writer.close()
        self.done.set_result(None)


async def serve_remotecommand(channels: WebSocketChannels, request: ExecRequest | AttachRequest,
                              backend: StreamingBackend) -> None:
    tty = request.tty
    stdin = channels.input(STDIN) if request.stdin else None
    resize = resize_events(channels.input(RESIZE)) if tty else None
    channels.start()  # only now: messages on channels not yet registered would be dropped
    await run_session(backend, request, SessionStreams(
        stdin=stdin,
        stdout=channels.output(STDOUT) if request.stdout else None,
        stderr=channels.output(STDERR) if request.stderr and not tty else None,
        resize=resize,
        status=StatusSink(channels.output(ERROR), as_json=channels.protocol in _JSON_STATUS),
    ), channels.done)


async def serve_port_forward(channels: WebSocketChannels, request: PortForwardRequest, ports: list[int],
                             backend: StreamingBackend) -> None:
    """Channels 2i (data) and 2i+1 (error) serve ports[i]; each opens by announcing its port (uint16 LE)."""

    async def one(index: int, port: int) -> None:
        data, errors = channels.output(2 * index), channels.output(2 * index + 1)
        announce = port.to_bytes(2, "little")
        await data.write(announce)
        await errors.write(announce)
        await forward(backend, request.sandbox_id, port, channels.input(2 * index), data, errors)

    for index in range(len(ports)):
        channels.input(2 * index)
    channels.start()
    tasks = [asyncio.create_task(one(i, port)) for i, port in enumerate(ports)]
    try:
        remaining = set(tasks)
        while remaining and not channels.done.done():  # every port is done, or the client left
            await asyncio.wait([*remaining, channels.done], return_when=asyncio.FIRST_COMPLETED)
            remaining = {task for task in remaining if not task.done()}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
