"""SPDY/3.1 framing byte for byte, the header codec against the spec dictionary, and two connections talking."""

import asyncio
import functools
import hashlib
import socket
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri.streaming import spdy, spdy_frames


def aio(fn):
    """Run an async test on a fresh event loop (the project does not use pytest-asyncio)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))
    return wrapper


def test_dictionary_is_the_spec_constant():
    # The zlib stream names the dictionary by Adler-32; kubelet's inflate fails on any other byte string.
    assert len(spdy_frames.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdy_frames.HEADER_DICTIONARY) == 0xE3C6A7C2
    assert spdy_frames.HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy_frames.HEADER_DICTIONARY.endswith(b"utf-,*,enq=0.")
    assert hashlib.sha256(spdy_frames.HEADER_DICTIONARY).hexdigest().startswith("51d27341373f923f")


def test_compressed_header_blocks_name_the_dictionary():
    block = spdy_frames.HeaderCompressor().compress({"streamtype": "stdout"})
    # zlib header, then FDICT's DICTID: the dictionary's Adler-32, big-endian.
    assert block[2:6] == struct.pack(">I", 0xE3C6A7C2)
    plain = zlib.decompressobj(zdict=spdy_frames.HEADER_DICTIONARY).decompress(block)
    assert plain == b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x06stdout"


def test_header_contexts_persist_across_blocks():
    out, inp = spdy_frames.HeaderCompressor(), spdy_frames.HeaderDecompressor()
    blocks = [{"streamtype": "error"}, {"streamtype": "stdin", "port": "80"}, {"requestid": ["1", "2"]}]
    for headers in blocks:
        decoded = inp.decompress(out.compress(headers))
        assert decoded == {k: [v] if isinstance(v, str) else v for k, v in headers.items()}
    # A fresh decompressor cannot read the middle of the stream: the context really is shared.
    with pytest.raises(spdy_frames.SpdyError):
        spdy_frames.HeaderDecompressor().decompress(out.compress({"a": "b"}))


def test_header_block_rejects_hostile_input():
    with pytest.raises(spdy_frames.SpdyError):
        spdy_frames.decode_header_block(b"\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x00")
    with pytest.raises(spdy_frames.SpdyError):
        spdy_frames.decode_header_block(b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00")
    bomb = spdy_frames.HeaderCompressor().compress({"x": "a" * 10000})
    with pytest.raises(spdy_frames.SpdyError):
        spdy_frames.HeaderDecompressor(max_block=1000).decompress(bomb)


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (spdy_frames.DataFrame(5, b"hi", spdy_frames.FLAG_FIN), b"\x00\x00\x00\x05\x01\x00\x00\x02hi"),
        (spdy_frames.RstStream(3, spdy_frames.CANCEL), b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05"),
        (spdy_frames.Ping(7), b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x07"),
        (spdy_frames.GoAway(9, 0), b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x09\x00\x00\x00\x00"),
        (spdy_frames.WindowUpdate(1, 0x10000), b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x01\x00\x01\x00\x00"),
        (spdy_frames.Settings({7: 0x100000}),
         b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x07\x00\x10\x00\x00"),
    ],
)
def test_frames_encode_and_decode_byte_for_byte(frame, wire):
    assert spdy_frames.encode_frame(frame) == wire
    assert spdy_frames.decode_frame(wire[:8], wire[8:], spdy_frames.HeaderDecompressor()) == frame


def test_syn_stream_layout_and_round_trip():
    wire = spdy_frames.encode_frame(spdy_frames.SynStream(1, {"streamtype": ["error"]}, spdy_frames.FLAG_FIN, 0, 2),
                             spdy_frames.HeaderCompressor())
    assert wire[:5] == b"\x80\x03\x00\x01\x01"
    assert struct.unpack(">I", wire[4:8])[0] & 0xFFFFFF == len(wire) - 8
    assert wire[8:18] == b"\x00\x00\x00\x01\x00\x00\x00\x00\x40\x00"
    frame = spdy_frames.decode_frame(wire[:8], wire[8:], spdy_frames.HeaderDecompressor())
    assert frame == spdy_frames.SynStream(1, {"streamtype": ["error"]}, spdy_frames.FLAG_FIN, 0, 2)


def test_wrong_version_and_unknown_types():
    with pytest.raises(spdy_frames.SpdyError):
        spdy_frames.parse_frame_header(b"\x80\x02\x00\x01\x00\x00\x00\x00")
    assert spdy_frames.decode_frame(b"\x80\x03\x00\x0a\x00\x00\x00\x00", b"", spdy_frames.HeaderDecompressor()) is None


async def _pair(**server_kwargs):
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    server = spdy.SpdyConnection(ra, wa, server=True, **server_kwargs)
    client = spdy.SpdyConnection(rb, wb, server=False)
    server.start()
    client.start()
    return server, client


@aio
async def test_streams_carry_data_both_ways_with_half_close():
    server, client = await _pair()
    try:
        out = await client.open_stream({"streamtype": "stdin"})
        incoming = await server.accept()
        assert incoming.header("streamtype") == "stdin"
        await incoming.reply()
        await out.wait_reply()
        payload = bytes(range(256)) * 20000  # 5 MB: well past every window
        writer = asyncio.create_task(out.write(payload))
        received = bytearray()
        while len(received) < len(payload):
            received += await incoming.read()
        await writer
        await out.close()
        assert await incoming.read() == b""
        assert received == payload
        await incoming.write(b"back")
        await incoming.close()
        assert await out.read_all() == b"back"
        await client.ping()
    finally:
        await client.close()
        await server.close()


@aio
async def test_reset_and_connection_end_wake_readers():
    server, client = await _pair()
    try:
        out = await client.open_stream({"streamtype": "data"})
        incoming = await server.accept()
        await incoming.reply()
        reader = asyncio.create_task(incoming.read())
        out.reset()
        assert await reader == b""
        with pytest.raises(spdy_frames.StreamClosed):
            await out.write(b"x")
        other = await client.open_stream({"streamtype": "error"})
        await server.accept()
        pending = asyncio.create_task(other.read())
        await server.close()
        assert await pending == b""
        assert await client.accept() is None
    finally:
        await client.close()


@aio
async def test_peer_without_flow_control_is_not_throttled():
    # spdystream never sends WINDOW_UPDATE; a raw peer that only reads must still get everything.
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    server = spdy.SpdyConnection(ra, wa, server=True)
    server.start()
    rb, wb = await asyncio.open_connection(sock=b)
    comp, decomp = spdy_frames.HeaderCompressor(), spdy_frames.HeaderDecompressor()
    wb.write(spdy_frames.encode_frame(spdy_frames.SynStream(1, {"streamtype": ["stdout"]}), comp))
    stream = await server.accept()
    await stream.reply()
    await stream.write(b"z" * 300_000)
    await stream.close()
    got, fin = 0, False
    while not fin:
        head = await rb.readexactly(8)
        payload = await rb.readexactly(spdy_frames.parse_frame_header(head)[3])
        frame = spdy_frames.decode_frame(head, payload, decomp)
        if isinstance(frame, spdy_frames.DataFrame):
            got += len(frame.data)
            fin = bool(frame.flags & spdy_frames.FLAG_FIN)
    assert got == 300_000
    wb.close()
    await server.close()


@aio
async def test_nothing_is_sent_before_our_first_frame():
    # client-go drops whatever it buffered past the 101 response, so the server must not speak first.
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    server = spdy.SpdyConnection(ra, wa, server=True)
    server.start()
    await asyncio.sleep(0)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(100)
    server._send(spdy_frames.encode_frame(spdy_frames.Ping(2)))
    b.setblocking(True)
    wire = b""
    while len(wire) < 20 + 16 + 12:
        wire += b.recv(100)
    assert wire[:8] == b"\x80\x03\x00\x04\x00\x00\x00\x0c"  # SETTINGS announcing our window first
    assert wire[20:28] == b"\x80\x03\x00\x09\x00\x00\x00\x08"  # then the session window
    assert wire[36:] == spdy_frames.encode_frame(spdy_frames.Ping(2))
    b.close()
    await server.close()


@given(st.binary(min_size=8, max_size=200))
@settings(max_examples=300, deadline=None)
def test_hostile_frames_fail_only_as_protocol_errors(wire):
    head, payload = wire[:8], wire[8:]
    try:
        length = spdy_frames.parse_frame_header(head)[3]
        spdy_frames.decode_frame(head, payload[:length] if len(payload) >= length else payload, spdy_frames.HeaderDecompressor())
    except spdy_frames.SpdyError:
        pass


@given(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
                       st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                        max_size=30), min_size=1, max_size=3),
                       max_size=8))
@settings(max_examples=100, deadline=None)
def test_header_blocks_round_trip(headers):
    assert spdy_frames.HeaderDecompressor().decompress(spdy_frames.HeaderCompressor().compress(headers)) == headers
