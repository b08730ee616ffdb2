"""Pure pieces of the streaming server: tokens, request parsing, negotiation, statuses, resize and channel codecs."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri.errors import ResourceExhausted
from cri.streaming import portforward, remotecommand, server, websocket
from cri.streaming.backend import ExecRequest, PortForwardRequest, TerminalSize
from cri.streaming.tokens import TokenCache


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_tokens_are_single_use():
    cache = TokenCache()
    request = ExecRequest("c", ("ls",))
    token = cache.issue(request)
    assert len(token) >= 20 and "/" not in token
    assert cache.consume(token) is request
    assert cache.consume(token) is None
    assert cache.consume("never-issued") is None


def test_tokens_expire_after_their_ttl():
    clock = Clock()
    cache = TokenCache(ttl=60, clock=clock)
    old = cache.issue(PortForwardRequest("p"))
    clock.now += 30
    young = cache.issue(PortForwardRequest("q"))
    clock.now += 31
    assert cache.consume(old) is None
    assert cache.consume(young) == PortForwardRequest("q")


def test_pending_tokens_are_bounded():
    clock = Clock()
    cache = TokenCache(ttl=60, max_pending=2, clock=clock)
    cache.issue(PortForwardRequest("a"))
    cache.issue(PortForwardRequest("b"))
    with pytest.raises(ResourceExhausted):
        cache.issue(PortForwardRequest("c"))
    clock.now += 61
    cache.issue(PortForwardRequest("c"))
    assert len(cache) == 1


def test_request_head_parsing():
    head = (b"POST /exec/abc?port=80&port=81 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: channel.k8s.io, v2.x\r\n\r\n")
    request = server.parse_request_head(head)
    assert (request.method, request.path, request.query) == ("POST", "/exec/abc", {"port": ["80", "81"]})
    assert request.values("x-stream-protocol-version") == ["v4.channel.k8s.io", "channel.k8s.io", "v2.x"]
    assert request.first("connection") == "Upgrade"
    for bad in (b"GET /\r\n\r\n", b"GET / SPDY/3\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                b"GET x HTTP/1.1\r\n\r\n", b"GET //[ HTTP/1.1\r\n\r\n"):
        with pytest.raises(server.BadRequest):
            server.parse_request_head(bad)


def test_negotiation_follows_client_preference():
    supported = remotecommand.SPDY_PROTOCOLS
    assert server.negotiate(["v9", "v3.channel.k8s.io", "v4.channel.k8s.io"], supported) == "v3.channel.k8s.io"
    assert server.negotiate(["v9"], supported) is None


def test_websocket_accept_key_from_rfc6455():
    assert server.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_advertised_host_brackets_ipv6():
    assert server.advertised_host("127.0.0.1") == "127.0.0.1"
    assert server.advertised_host("::1") == "[::1]"
    assert server.advertised_host("0.0.0.0") not in ("", "0.0.0.0")


def test_status_shapes_match_kubelet():
    assert remotecommand.encode_status(remotecommand.success_status(), True) == b'{"metadata":{},"status":"Success"}'
    assert remotecommand.encode_status(remotecommand.success_status(), False) == b""
    failure = remotecommand.exit_code_status(7, ("sh", "-c", "exit 7"))
    assert json.loads(remotecommand.encode_status(failure, True)) == failure
    assert list(failure) == ["metadata", "status", "message", "reason", "details"]
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert remotecommand.encode_status(failure, False).startswith(b"command terminated with non-zero exit code: ")
    assert remotecommand.internal_error_status("x")["code"] == 500


def test_resize_events_parse_a_json_stream():
    buffer = bytearray(b'{"Width":80,"Height":24}\n{"Width":100,"Height":')
    assert remotecommand.parse_resize_events(buffer) == [TerminalSize(80, 24)]
    buffer += b'50}{"Width":-1,"Height":5}'
    assert remotecommand.parse_resize_events(buffer) == [TerminalSize(100, 50)]
    assert buffer == b""
    hostile = bytearray(b"[" * 3000 + b"]" * 3000)
    assert remotecommand.parse_resize_events(hostile) == []


def test_expected_streams_follow_the_request_and_protocol():
    tty = ExecRequest("c", ("sh",), tty=True, stdin=True, stdout=True, stderr=False)
    assert remotecommand.expected_stream_types(tty, "v4.channel.k8s.io") == {"error", "stdin", "stdout", "resize"}
    assert remotecommand.expected_stream_types(tty, "v2.channel.k8s.io") == {"error", "stdin", "stdout"}
    plain = ExecRequest("c", ("ls",))
    assert remotecommand.expected_stream_types(plain, "v4.channel.k8s.io") == {"error", "stdout", "stderr"}


@pytest.mark.parametrize("b64", [False, True])
def test_websocket_channel_codec_round_trip(b64):
    message = websocket.encode_message(2, b"\x00\xffdata", b64)
    assert websocket.decode_message(message.data, b64) == (2, b"\x00\xffdata")
    assert websocket.decode_message(b"", b64) is None


def test_websocket_channel_wire_forms():
    assert websocket.encode_message(1, b"hi", False).data == b"\x01hi"
    assert websocket.encode_message(1, b"hi", True).data == "1aGk="
    assert websocket.decode_message("1!!notbase64", True) is None


def test_ports_must_be_in_range():
    assert portforward.parse_port("8080") == 8080
    for bad in ("0", "65536", "-1", "80a", ""):
        with pytest.raises(ValueError):
            portforward.parse_port(bad)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_hostile_request_heads_fail_only_as_bad_requests(head):
    for candidate in (head, b"GET /" + head + b" HTTP/1.1\r\n\r\n"):
        try:
            server.parse_request_head(candidate)
        except server.BadRequest:
            pass
