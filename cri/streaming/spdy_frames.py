"""SPDY/3.1's wire format, pure so that it can be tested byte for byte: the frame dataclasses,
``encode_frame``/``decode_frame``, and the header-block codec (zlib with the SPDY/3 dictionary, one compression
context per direction, sync-flushed after each block). The connection over it is spdy.py's."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def _compressed(compressor: HeaderCompressor | None, headers: Headers) -> bytes:
    if compressor is None:
        raise TypeError("a frame carrying headers needs this direction's header compressor")
    return compressor.compress(headers)


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """Serialize one frame; frames carrying headers need this direction's compressor."""
    match frame:
        case DataFrame(stream_id, data, flags):
            return encode_data(stream_id, data, flags)
        case SynStream(stream_id, headers, flags, associated_id, priority):
            head = struct.pack(">IIBB", stream_id & _STREAM_MASK, associated_id & _STREAM_MASK,
                               (priority & 7) << 5, 0)
            return _control(SYN_STREAM, flags, head + _compressed(compressor, headers))
        case SynReply(stream_id, headers, flags) | HeadersFrame(stream_id, headers, flags):
            return _control(SYN_REPLY if isinstance(frame, SynReply) else HEADERS, flags,
                            struct.pack(">I", stream_id & _STREAM_MASK) + _compressed(compressor, headers))
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
