"""SPDY/3.1: the framing kubelet and critest speak to a runtime's streaming server, and an asyncio connection.

Two layers, kept apart so that the first can be tested byte for byte:

* pure framing: frame dataclasses, ``encode_frame``/``decode_frame`` and the header-block codec (zlib with the
  SPDY/3 dictionary, one compression context per direction, sync-flushed after each block);
* ``SpdyConnection``/``SpdyStream``: streams multiplexed over one asyncio byte stream, with ping echo, GOAWAY,
  half-close, resets and flow control.

Flow control: we always advertise windows and send WINDOW_UPDATE as the application consumes data.  Go's
spdystream (the client kubelet and critest use) neither sends WINDOW_UPDATE nor honours windows, so we only hold
our sending to the peer's windows once the peer has shown it does flow control (it sent SETTINGS or
WINDOW_UPDATE); otherwise TCP backpressure is what bounds us.  Incoming data is likewise bounded by pausing the
frame reader while a stream's unread buffer is over its limit.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

SETTINGS_INITIAL_WINDOW_SIZE = 7
DEFAULT_WINDOW = 65536
MAX_WINDOW = 0x7FFFFFFF
MAX_LENGTH = 0xFFFFFF
MAX_CONTROL_PAYLOAD = 1 << 20
MAX_HEADER_BLOCK = 256 << 10
DATA_CHUNK = 128 << 10

_STREAM_MASK = 0x7FFFFFFF


def _build_dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1).

    The spec lists it as a byte array: length-prefixed header names and common values, then a run of status
    codes, reason phrases, dates and media types.  Both peers must use it exactly: the zlib stream names it by
    its Adler-32 (0xe3c6a7c2), which the unit tests pin together with its length (1423).
    """
    words = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
        "age allow authorization cache-control connection content-base content-encoding content-language "
        "content-length content-location content-md5 content-range content-type date etag expect expires from "
        "host if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
        "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
    ).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


HEADER_DICTIONARY = _build_dictionary()

Headers = dict[str, list[str]]


class SpdyError(Exception):
    """The peer broke the protocol; the connection cannot continue."""


class StreamClosed(Exception):
    """Writing to a stream that was reset, half-closed by us, or whose connection ended."""


# ---------------------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_id: int = 0
    priority: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    values: dict[int, int]
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


def encode_header_block(headers: Mapping[str, str | Sequence[str]]) -> bytes:
    """The uncompressed name/value block: a count, then length-prefixed lowercase names and NUL-joined values."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw_name = name.lower().encode("utf-8", "surrogateescape")
        raw_value = (value if isinstance(value, str) else "\x00".join(value)).encode("utf-8", "surrogateescape")
        parts += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(block: bytes) -> Headers:
    """Parse an uncompressed name/value block, refusing anything malformed.

    Text is UTF-8, with undecodable bytes kept as surrogates, so any bytes survive a round trip."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        offset = 4
        headers: Headers = {}
        for _ in range(count):
            (name_len,) = struct.unpack_from(">I", block, offset)
            name = block[offset + 4 : offset + 4 + name_len]
            offset += 4 + name_len
            (value_len,) = struct.unpack_from(">I", block, offset)
            value = block[offset + 4 : offset + 4 + value_len]
            offset += 4 + value_len
            if len(name) != name_len or len(value) != value_len or not name_len:
                raise SpdyError("truncated header block")
            key = name.decode("utf-8", "surrogateescape")
            if key != key.lower() or key in headers:
                raise SpdyError(f"bad header name {key!r}")
            headers[key] = value.decode("utf-8", "surrogateescape").split("\x00")
    except struct.error as e:
        raise SpdyError("truncated header block") from e
    if offset != len(block):
        raise SpdyError("trailing bytes after header block")
    return headers


class HeaderCompressor:
    """One direction's zlib context: every header block we send continues the same deflate stream."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                   HEADER_DICTIONARY)

    def compress(self, headers: Mapping[str, str | Sequence[str]]) -> bytes:
        return self._z.compress(encode_header_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's zlib context; bounded so that a hostile peer cannot inflate a block without limit."""

    def __init__(self, max_block: int = MAX_HEADER_BLOCK) -> None:
        self._z = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max = max_block

    def decompress(self, data: bytes) -> Headers:
        try:
            block = self._z.decompress(data, self._max + 1)
        except zlib.error as e:
            raise SpdyError(f"header decompression failed: {e}") from e
        if len(block) > self._max or self._z.unconsumed_tail:
            raise SpdyError("header block too large")
        return decode_header_block(block)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("frame too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def encode_data(stream_id: int, data: bytes | memoryview, flags: int = 0) -> bytes:
    if len(data) > MAX_LENGTH:
        raise ValueError("frame too large")
    return struct.pack(">II", stream_id & _STREAM_MASK, (flags << 24) | len(data)) + bytes(data)


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """Serialize one frame; frames carrying headers need this direction's compressor."""
    match frame:
        case DataFrame(stream_id, data, flags):
            return encode_data(stream_id, data, flags)
        case SynStream(stream_id, headers, flags, associated_id, priority):
            head = struct.pack(">IIBB", stream_id & _STREAM_MASK, associated_id & _STREAM_MASK,
                               (priority & 7) << 5, 0)
            return _control(SYN_STREAM, flags, head + compressor.compress(headers))
        case SynReply(stream_id, headers, flags) | HeadersFrame(stream_id, headers, flags):
            return _control(SYN_REPLY if isinstance(frame, SynReply) else HEADERS, flags,
                            struct.pack(">I", stream_id & _STREAM_MASK) + compressor.compress(headers))
        case RstStream(stream_id, status):
            return _control(RST_STREAM, 0, struct.pack(">II", stream_id & _STREAM_MASK, status))
        case Settings(values, flags):
            entries = b"".join(struct.pack(">II", key & 0xFFFFFF, value) for key, value in values.items())
            return _control(SETTINGS, flags, struct.pack(">I", len(values)) + entries)
        case Ping(ping_id):
            return _control(PING, 0, struct.pack(">I", ping_id))
        case GoAway(last_good, status):
            return _control(GOAWAY, 0, struct.pack(">II", last_good & _STREAM_MASK, status))
        case WindowUpdate(stream_id, delta):
            return _control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id & _STREAM_MASK, delta & _STREAM_MASK))
    raise TypeError(f"not a frame: {frame!r}")


def parse_frame_header(head: bytes) -> tuple[bool, int, int, int]:
    """(is_control, stream id or frame type, flags, payload length) from the 8-byte frame header."""
    word, flags_length = struct.unpack(">II", head)
    flags, length = flags_length >> 24, flags_length & MAX_LENGTH
    if word & 0x80000000:
        version = (word >> 16) & 0x7FFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version}")
        return True, word & 0xFFFF, flags, length
    return False, word & _STREAM_MASK, flags, length


def decode_frame(head: bytes, payload: bytes, decompressor: HeaderDecompressor) -> Frame | None:
    """Parse one frame; None for control frame types we may ignore (the spec says to skip unknown types)."""
    is_control, kind, flags, length = parse_frame_header(head)
    if len(payload) != length:
        raise SpdyError("truncated frame")
    if not is_control:
        return DataFrame(kind, payload, flags)
    try:
        if kind == SYN_STREAM:
            stream_id, associated, prio, _slot = struct.unpack_from(">IIBB", payload)
            return SynStream(stream_id & _STREAM_MASK, decompressor.decompress(payload[10:]), flags,
                             associated & _STREAM_MASK, prio >> 5)
        if kind in (SYN_REPLY, HEADERS):
            (stream_id,) = struct.unpack_from(">I", payload)
            cls = SynReply if kind == SYN_REPLY else HeadersFrame
            return cls(stream_id & _STREAM_MASK, decompressor.decompress(payload[4:]), flags)
        if kind == RST_STREAM:
            stream_id, status = struct.unpack(">II", payload)
            return RstStream(stream_id & _STREAM_MASK, status)
        if kind == SETTINGS:
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise SpdyError("bad SETTINGS length")
            values = {}
            for i in range(count):
                key, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                values[key & 0xFFFFFF] = value
            return Settings(values, flags)
        if kind == PING:
            (ping_id,) = struct.unpack(">I", payload)
            return Ping(ping_id)
        if kind == GOAWAY:
            last_good, status = struct.unpack(">II", payload[:8]) if len(payload) >= 8 else (
                struct.unpack(">I", payload)[0], GOAWAY_OK)
            return GoAway(last_good & _STREAM_MASK, status)
        if kind == WINDOW_UPDATE:
            stream_id, delta = struct.unpack(">II", payload)
            return WindowUpdate(stream_id & _STREAM_MASK, delta & _STREAM_MASK)
    except struct.error as e:
        raise SpdyError(f"malformed control frame type {kind}") from e
    return None


# ---------------------------------------------------------------------------------------------------------
# Connection


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


async def close_transport(writer: asyncio.StreamWriter, task: asyncio.Task | None) -> None:
    """Wait up to 5 s for the transport to close, else abort it; then end the connection's reader task (unless
    that is the caller). The last step of closing a SPDY or WebSocket connection."""
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.transport.abort()
    if task is not None and task is not asyncio.current_task():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass(eq=False)
class SpdyStream:
    """One SPDY stream: read what the peer sends until its FIN, write until our FIN."""

    conn: SpdyConnection
    stream_id: int
    headers: Headers
    _chunks: deque = field(default_factory=deque)
    _buffered: int = 0
    _remote_closed: bool = False
    _local_closed: bool = False
    _reset: bool = False
    _replied: asyncio.Future | None = None
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
        self.conn._send_headers(SynReply(self.stream_id, {} if headers is None else dict(headers),
                                         FLAG_FIN if fin else 0))
        if fin:
            self._local_closed = True
        await self.conn._drain()

    async def wait_reply(self) -> None:
        """For streams we opened: wait for the peer's SYN_REPLY; raises StreamClosed if it reset the stream."""
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
    """SPDY/3.1 streams over an asyncio (reader, writer) pair.

    The server takes streams the peer opens with ``accept()``; the client opens them with ``open_stream()``.
    ``start()`` runs the frame reader until the peer leaves, breaks the protocol, or stays idle too long; after
    a GOAWAY the streams already open carry on.  ``done`` resolves when the connection is over.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, server: bool,
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
        self._pings: dict[int, asyncio.Future] = {}
        self._next_ping = 2 if server else 1
        self._task: asyncio.Task | None = None
        self.done = self._loop.create_future()

    @property
    def is_closed(self) -> bool:
        return self._closed

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self.run(), name=f"spdy-{'server' if self._server else 'client'}")
        return self._task

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._idle_watchdog()) if self._idle_timeout else None
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
        self._send_headers(SynStream(stream.stream_id, dict(headers), FLAG_FIN if fin else 0))
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

    async def _idle_watchdog(self) -> None:
        while not self._closed:
            remaining = self._last_activity + self._idle_timeout - self._loop.time()
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
