"""SPDY/3.1 connections: streams multiplexed over one asyncio byte stream, with ping echo, GOAWAY, half-close,
resets and flow control, over the pure framing of spdy_frames.py.

Flow control: we always advertise windows and send WINDOW_UPDATE as the application consumes data.  Go's
spdystream (the client kubelet and critest use) neither sends WINDOW_UPDATE nor honours windows, so we only hold
our sending to the peer's windows once the peer has shown it does flow control (it sent SETTINGS or
WINDOW_UPDATE); otherwise TCP backpressure is what bounds us.  Incoming data is likewise bounded by pausing the
frame reader while a stream's unread buffer is over its limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .spdy_frames import (CANCEL, DATA_CHUNK, DEFAULT_WINDOW, FLAG_FIN, FLAG_UNIDIRECTIONAL, GOAWAY_OK,
                          GOAWAY_PROTOCOL_ERROR, INVALID_STREAM, MAX_CONTROL_PAYLOAD, MAX_WINDOW, PROTOCOL_ERROR,
                          REFUSED_STREAM, SETTINGS_INITIAL_WINDOW_SIZE, DataFrame, Frame, GoAway, HeaderCompressor,
                          HeaderDecompressor, Headers, HeadersFrame, Ping, RstStream, Settings, SpdyError,
                          StreamClosed, SynReply, SynStream, WindowUpdate, decode_frame, encode_data, encode_frame,
                          parse_frame_header)
from .transport import ByteReader, ByteWriter, close_transport, next_chunk


def _values(headers: Mapping[str, str]) -> Headers:
    """One value per name, as a header block holds them."""
    return {name: [value] for name, value in headers.items()}


@dataclass(eq=False)
class SpdyStream:
    """One SPDY stream: read what the peer sends until its FIN, write until our FIN."""

    conn: SpdyConnection
    stream_id: int
    headers: Headers
    _chunks: deque[bytes] = field(default_factory=deque)
    _buffered: int = 0
    _remote_closed: bool = False
    _local_closed: bool = False
    _reset: bool = False
    _replied: asyncio.Future[None] | None = None  # for streams we opened: resolved by the peer's SYN_REPLY
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _send_window: int = DEFAULT_WINDOW
    _unacked: int = 0

    def header(self, name: str, default: str = "") -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else default

    @property
    def closed(self) -> bool:
        return self._reset or (self._remote_closed and self._local_closed)

    async def read(self, n: int = DATA_CHUNK) -> bytes:
        """Up to n bytes; b"" once the peer half-closed, reset the stream, or the connection ended."""
        chunk = await next_chunk(self._chunks, n, lambda: self._remote_closed or self._reset, self._changed)
        if chunk:
            self._buffered -= len(chunk)
            self.conn._consumed(self, len(chunk))
        return chunk

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        """Everything until the peer's FIN, refusing more than limit bytes."""
        parts, size = [], 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                raise SpdyError(f"stream {self.stream_id} sent more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            size = await self.conn._reserve_send(self, len(view))
            self.conn._send(encode_data(self.stream_id, view[:size]))
            view = view[size:]
            await self.conn._drain()

    async def close(self) -> None:
        """Half-close: tell the peer we will send nothing more (an empty DATA frame with FIN)."""
        if self._local_closed or self._reset or self.conn.is_closed:
            self._local_closed = True
            return
        self._local_closed = True
        self.conn._send(encode_data(self.stream_id, b"", FLAG_FIN))
        self.conn._forget_if_done(self)
        await self.conn._drain()

    def reset(self, status: int = CANCEL) -> None:
        """Abort the stream in both directions."""
        if not self._reset and not self.conn.is_closed:
            self.conn._send(encode_frame(RstStream(self.stream_id, status)))
        self._mark_reset()

    async def reply(self, headers: Mapping[str, str] | None = None, fin: bool = False) -> None:
        """Accept a stream the peer opened (SYN_REPLY)."""
        self.conn._send_headers(SynReply(self.stream_id, _values(headers or {}),
                                         FLAG_FIN if fin else 0))
        if fin:
            self._local_closed = True
        await self.conn._drain()

    async def wait_reply(self) -> None:
        """For streams we opened: wait for the peer's SYN_REPLY; raises StreamClosed if it reset the stream."""
        assert self._replied is not None, "wait_reply is for streams opened with open_stream"
        await self._replied

    def _feed(self, data: bytes, fin: bool) -> None:
        if data and not self._remote_closed and not self._reset:
            self._chunks.append(data)
            self._buffered += len(data)
        if fin:
            self._remote_closed = True
        self._changed.set()

    def _mark_reset(self) -> None:
        self._reset = True
        self._local_closed = self._remote_closed = True
        if self._replied is not None and not self._replied.done():
            self._replied.set_exception(StreamClosed(f"stream {self.stream_id} was reset"))
        self._changed.set()
        self.conn._forget_if_done(self)


class SpdyConnection:
    """SPDY/3.1 streams over a (reader, writer) pair: asyncio's, or a WebSocket tunnel's.

    The server takes streams the peer opens with ``accept()``; the client opens them with ``open_stream()``.
    ``start()`` runs the frame reader until the peer leaves, breaks the protocol, or stays idle too long; after
    a GOAWAY the streams already open carry on.  ``done`` resolves when the connection is over.
    """

    def __init__(self, reader: ByteReader, writer: ByteWriter, *, server: bool,
                 idle_timeout: float | None = None, receive_window: int = 1 << 20,
                 session_window: int = 16 << 20,
                 max_streams: int = 1024, stream_buffer: int = 1 << 20) -> None:
        self._reader, self._writer = reader, writer
        self._server = server
        self._idle_timeout = idle_timeout
        self._receive_window = receive_window
        self._session_window = session_window
        self._max_streams = max_streams
        self._stream_buffer = stream_buffer
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._session_send_window = DEFAULT_WINDOW
        self._session_unacked = 0
        self._peer_flow_control = False
        self._window_changed = asyncio.Event()
        self._going_away = False
        self._closed = False
        self._announced = False
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._next_ping = 2 if server else 1
        self._task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()

    @property
    def is_closed(self) -> bool:
        return self._closed

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"spdy-{'server' if self._server else 'client'}")
        return self._task

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._idle_watchdog(self._idle_timeout)) if self._idle_timeout else None
        try:
            while True:
                head = await self._reader.readexactly(8)
                is_control, _, _, length = parse_frame_header(head)
                if is_control and length > MAX_CONTROL_PAYLOAD:
                    raise SpdyError(f"control frame of {length} bytes")
                payload = await self._reader.readexactly(length) if length else b""
                self._last_activity = self._loop.time()
                frame = decode_frame(head, payload, self._decompressor)
                if frame is not None:
                    await self._handle(frame)
        except SpdyError:
            if not self._closed:
                self._send(encode_frame(GoAway(self._last_peer_id, GOAWAY_PROTOCOL_ERROR)))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if watchdog:
                watchdog.cancel()
            self._shutdown()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened, or None (for every later call too) once it can open no more."""
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)
        return stream

    async def open_stream(self, headers: Mapping[str, str], fin: bool = False) -> SpdyStream:
        if self._closed or self._going_away:
            raise StreamClosed("connection is closed")
        stream = SpdyStream(self, self._next_id, {k.lower(): [v] for k, v in headers.items()})
        self._next_id += 2
        stream._replied = self._loop.create_future()
        stream._send_window = self._peer_initial_window
        stream._local_closed = fin
        self._streams[stream.stream_id] = stream
        self._send_headers(SynStream(stream.stream_id, _values(headers), FLAG_FIN if fin else 0))
        await self._drain()
        return stream

    async def ping(self) -> None:
        ping_id = self._next_ping
        self._next_ping += 2
        fut = self._pings[ping_id] = self._loop.create_future()
        self._send(encode_frame(Ping(ping_id)))
        try:
            await fut
        finally:
            self._pings.pop(ping_id, None)

    async def close(self) -> None:
        """Say GOAWAY, flush what is queued, and close the transport."""
        if not self._closed:
            self._send(encode_frame(GoAway(self._last_peer_id, GOAWAY_OK)))
        self._shutdown()
        await close_transport(self._writer, self._task)

    # --- frame handling

    async def _handle(self, frame: Frame) -> None:
        match frame:
            case DataFrame(stream_id, data, flags):
                stream = self._streams.get(stream_id)
                if stream is None:
                    ours = stream_id % 2 == self._next_id % 2
                    if not (stream_id < self._next_id if ours else stream_id <= self._last_peer_id):
                        self._send(encode_frame(RstStream(stream_id, INVALID_STREAM)))
                    return  # otherwise late data for a stream already finished
                stream._feed(data, bool(flags & FLAG_FIN))
                self._forget_if_done(stream)
                while stream._buffered > self._stream_buffer and not stream.closed and not self._closed:
                    stream._changed.clear()
                    await stream._changed.wait()
            case SynStream(stream_id, headers, flags):
                self._on_syn_stream(stream_id, headers, flags)
            case SynReply(stream_id, _, flags) | HeadersFrame(stream_id, _, flags):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    if isinstance(frame, SynReply) and stream._replied is not None and not stream._replied.done():
                        stream._replied.set_result(None)
                    if flags & FLAG_FIN:
                        stream._feed(b"", True)
                        self._forget_if_done(stream)
            case RstStream(stream_id, _):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream._reset = True  # no RST back
                    stream._mark_reset()
            case Settings(values):
                self._peer_flow_control = True
                if SETTINGS_INITIAL_WINDOW_SIZE in values:
                    new = min(values[SETTINGS_INITIAL_WINDOW_SIZE], MAX_WINDOW)
                    for stream in self._streams.values():
                        stream._send_window += new - self._peer_initial_window
                    self._peer_initial_window = new
                self._window_changed.set()
            case Ping(ping_id):
                if (ping_id & 1) == (self._next_ping & 1):
                    fut = self._pings.get(ping_id)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                else:
                    self._send(encode_frame(frame))
            case GoAway():
                self._going_away = True  # streams already open carry on; the peer closes the transport
                self._incoming.put_nowait(None)
            case WindowUpdate(stream_id, delta):
                self._peer_flow_control = True
                if stream_id == 0:
                    self._session_send_window = min(self._session_send_window + delta, MAX_WINDOW)
                elif (stream := self._streams.get(stream_id)) is not None:
                    stream._send_window = min(stream._send_window + delta, MAX_WINDOW)
                self._window_changed.set()

    def _on_syn_stream(self, stream_id: int, headers: Headers, flags: int) -> None:
        if stream_id % 2 == self._next_id % 2 or stream_id <= self._last_peer_id:
            self._send(encode_frame(RstStream(stream_id, PROTOCOL_ERROR)))
            return
        self._last_peer_id = stream_id
        if self._going_away or len(self._streams) >= self._max_streams:
            self._send(encode_frame(RstStream(stream_id, REFUSED_STREAM)))
            return
        stream = SpdyStream(self, stream_id, headers)
        stream._send_window = self._peer_initial_window
        stream._remote_closed = bool(flags & FLAG_FIN)
        stream._local_closed = bool(flags & FLAG_UNIDIRECTIONAL)
        self._streams[stream_id] = stream
        self._incoming.put_nowait(stream)

    # --- sending

    def _send(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._announced:
            # Our windows go out with our first frame, never unprompted right after the upgrade: client-go reads
            # the 101 response through a buffer it then drops, so bytes we sent early could be lost.
            # (spdystream ignores these frames; our own peer uses them.)
            self._announced = True
            self._writer.write(encode_frame(Settings({SETTINGS_INITIAL_WINDOW_SIZE: self._receive_window}))
                               + encode_frame(WindowUpdate(0, self._session_window - DEFAULT_WINDOW)))
        self._writer.write(data)
        self._last_activity = self._loop.time()

    def _send_headers(self, frame: Frame) -> None:
        """Compress and write in one step so header blocks reach the peer in compression order."""
        self._send(encode_frame(frame, self._compressor))

    async def _drain(self) -> None:
        if self._closed:
            return
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._shutdown()

    async def _reserve_send(self, stream: SpdyStream, wanted: int) -> int:
        """How many bytes may go out now: all of a chunk for peers without flow control, else the windows."""
        while True:
            if stream._local_closed or stream._reset or self._closed:
                raise StreamClosed(f"stream {stream.stream_id} is closed for writing")
            size = min(wanted, DATA_CHUNK)
            if not self._peer_flow_control:
                return size
            size = min(size, stream._send_window, self._session_send_window)
            if size > 0:
                stream._send_window -= size
                self._session_send_window -= size
                return size
            self._window_changed.clear()
            await self._window_changed.wait()

    def _consumed(self, stream: SpdyStream, size: int) -> None:
        """Give the peer its window back once half of it has been read by the application."""
        stream._unacked += size
        self._session_unacked += size
        if stream._unacked >= self._receive_window // 2 and not stream._remote_closed:
            self._send(encode_frame(WindowUpdate(stream.stream_id, stream._unacked)))
            stream._unacked = 0
        if self._session_unacked >= self._session_window // 2:
            self._send(encode_frame(WindowUpdate(0, self._session_unacked)))
            self._session_unacked = 0
        stream._changed.set()  # wakes a frame reader paused on this stream's buffer
        self._forget_if_done(stream)

    def _forget_if_done(self, stream: SpdyStream) -> None:
        if stream.closed and not stream._chunks:
            self._streams.pop(stream.stream_id, None)

    async def _idle_watchdog(self, timeout: float) -> None:
        while not self._closed:
            remaining = self._last_activity + timeout - self._loop.time()
            if remaining <= 0:
                self._send(encode_frame(GoAway(self._last_peer_id, GOAWAY_OK)))
                self._shutdown()
                return
            await asyncio.sleep(remaining)

    def _shutdown(self) -> None:
        """Wake every waiter: streams read EOF, writers get StreamClosed, accept() gets None."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            stream._remote_closed = stream._local_closed = True
            if stream._replied is not None and not stream._replied.done():
                stream._replied.set_exception(StreamClosed("connection closed"))
            stream._changed.set()
        self._streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._window_changed.set()
        self._incoming.put_nowait(None)
        self._writer.close()
        if not self.done.done():
            self.done.set_result(None)
