"""The streaming server end to end over loopback, with an in-test backend: what a kubelet client sees."""

import asyncio
import functools
import hashlib
import os

import pytest

from cri.config import StreamingConfig
from cri.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest, TerminalSize
from cri.streaming.server import StreamingServer
from tests.streamclient import HttpError, SpdyPortForward, SpdySession, WebSocketClient, spdy_connect, spdy_exec


def aio(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))
    return wrapper


class FakeBackend:
    """Commands: echo ARGS, cat (stdin to stdout), fail N, err TEXT, sizes (report resizes), hang, boom."""

    def __init__(self, echo_port: int = 0):
        self.echo_port = echo_port
        self.cancelled = asyncio.Event()
        self.sizes: list[TerminalSize] = []
        self.attached: list[str] = []
        self.ran: list[str] = []

    async def exec(self, container_id, cmd, tty, stdin, stdout, stderr, resize):
        name, args = cmd[0], cmd[1:]
        self.ran.append(name)
        if name == "echo":
            await stdout.write((" ".join(args) + "\n").encode())
        elif name == "cat":
            while chunk := await stdin.read(65536):
                await stdout.write(chunk)
        elif name == "fail":
            return int(args[0])
        elif name == "err":
            await stderr.write(args[0].encode())
        elif name == "sizes":
            async for size in resize:
                await stdout.write(f"{size.width}x{size.height}\n".encode())
        elif name == "hang":
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        elif name == "boom":
            raise RuntimeError("no such container")
        return 0

    async def attach(self, container_id, tty, stdin, stdout, stderr, resize):
        self.attached.append(container_id)
        await stdout.write(b"attached\n")

    async def port_forward(self, sandbox_id, port):
        if port != 80:
            raise ConnectionRefusedError(f"nothing listens on {port}")
        return await asyncio.open_connection("127.0.0.1", self.echo_port)


async def echo_server():
    async def echo(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def streaming(backend, **config):
    server = StreamingServer(StreamingConfig(**config), backend)
    await server.start()
    return server


def exec_url(server, *cmd, **flags):
    return server.url_for_exec(ExecRequest("c1", tuple(cmd), **flags))


@aio
async def test_exec_reports_output_and_success():
    server = await streaming(FakeBackend())
    try:
        url = exec_url(server, "echo", "hi")
        assert url.startswith(f"http://127.0.0.1:{server.port}/exec/")
        result = await spdy_exec(url)
        assert result.protocol == "v4.channel.k8s.io"
        assert result.stdout == b"hi\n"
        assert result.status == {"metadata": {}, "status": "Success"}
        assert result.exit_code == 0
    finally:
        await server.stop()


@aio
async def test_non_zero_exit_code_is_a_metav1_status():
    server = await streaming(FakeBackend())
    try:
        result = await spdy_exec(exec_url(server, "fail", "3"))
        assert result.exit_code == 3
        assert result.status["reason"] == "NonZeroExitCode"
        assert result.status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
        assert result.status["message"].startswith("command terminated with non-zero exit code: ")
        failed = await spdy_exec(exec_url(server, "boom"))
        assert failed.status["reason"] == "InternalError"
        assert "no such container" in failed.status["message"]
    finally:
        await server.stop()


@aio
async def test_older_protocols_write_only_failure_text():
    server = await streaming(FakeBackend())
    try:
        for version in ("v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"):
            ok = await spdy_exec(exec_url(server, "err", "oops"), protocols=(version,))
            assert (ok.protocol, ok.stderr, ok.error) == (version, b"oops", b"")
            failed = await spdy_exec(exec_url(server, "fail", "2"), protocols=(version,))
            assert b"non-zero exit code" in failed.error
    finally:
        await server.stop()


@pytest.mark.parametrize("spdystream_like", [False, True], ids=["flow-controlled", "spdystream-like"])
@aio
async def test_stdin_is_copied_and_its_close_ends_the_command(spdystream_like):
    server = await streaming(FakeBackend())
    try:
        payload = os.urandom(3 << 20)
        result = await spdy_exec(exec_url(server, "cat", stdin=True, stderr=False), stdin=payload, stderr=False,
                                 spdystream_like=spdystream_like)
        assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()
        assert result.exit_code == 0
    finally:
        await server.stop()


@aio
async def test_tty_resize_events_reach_the_backend():
    server = await streaming(FakeBackend())
    try:
        session = await SpdySession.open(exec_url(server, "sizes", tty=True, stdin=True, stderr=False),
                                         stdin=True, tty=True)
        assert "resize" in session.streams and "stderr" not in session.streams
        await session.resize(80, 24)
        await session.resize(132, 43)
        await session.read_until(b"132x43\n")
        await session.streams["resize"].close()
        result = await session.finish()
        assert result.exit_code == 0
    finally:
        await server.stop()


@aio
async def test_attach_uses_the_attach_request():
    backend = FakeBackend()
    server = await streaming(backend)
    try:
        result = await spdy_exec(server.url_for_attach(AttachRequest("c9", stderr=False)), stderr=False)
        assert (result.stdout, result.exit_code, backend.attached) == (b"attached\n", 0, ["c9"])
    finally:
        await server.stop()


@aio
async def test_tokens_are_single_use_and_unknown_ones_404():
    server = await streaming(FakeBackend())
    try:
        url = exec_url(server, "echo", "once")
        await spdy_exec(url)
        for bad in (url, f"http://127.0.0.1:{server.port}/exec/nosuchtoken",
                    f"http://127.0.0.1:{server.port}/attach/" + url.rsplit("/", 1)[1]):
            with pytest.raises(HttpError) as err:
                await spdy_exec(bad)
            assert err.value.status == 404
        # A token for exec is no good on the attach path.
        with pytest.raises(HttpError) as err:
            await spdy_exec(exec_url(server, "echo").replace("/exec/", "/attach/"))
        assert err.value.status == 404
    finally:
        await server.stop()


@aio
async def test_unsupported_protocol_is_refused_with_the_accepted_list():
    server = await streaming(FakeBackend())
    try:
        with pytest.raises(HttpError) as err:
            await spdy_connect(exec_url(server, "echo"), ["v9.channel.k8s.io"])
        assert err.value.status == 403
        assert err.value.headers["x-accepted-stream-protocol-versions"] == [
            "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
        conn, chosen = await spdy_connect(exec_url(server, "echo"), ["v9.channel.k8s.io", "v2.channel.k8s.io"])
        assert chosen == "v2.channel.k8s.io"
        await conn.close()
    finally:
        await server.stop()


@aio
async def test_abrupt_disconnect_cancels_the_command_and_frees_the_session():
    backend = FakeBackend()
    server = await streaming(backend)
    try:
        fds_before = len(os.listdir("/proc/self/fd"))
        session = await SpdySession.open(exec_url(server, "hang", stdin=True), stdin=True)
        session.conn._writer.transport.abort()
        await backend.cancelled.wait()
        while server.active_sessions:
            await asyncio.sleep(0.01)
        await session.conn.close()
        assert len(os.listdir("/proc/self/fd")) <= fds_before
    finally:
        await server.stop()


@pytest.mark.parametrize("transport", ["flow-controlled", "spdystream-like", "websocket-tunnel"])
@aio
async def test_port_forward_many_connections_and_a_large_transfer(transport):
    echo, echo_port = await echo_server()
    server = await streaming(FakeBackend(echo_port))
    try:
        url = server.url_for_port_forward(PortForwardRequest("p1", (80,)))
        if transport == "websocket-tunnel":
            forwarder = await SpdyPortForward.open_over_websocket(url)
        else:
            forwarder = await SpdyPortForward.open(url, spdystream_like=transport == "spdystream-like")

        async def roundtrip(size: int) -> bool:
            data, error = await forwarder.connect(80)
            payload = os.urandom(size)
            sender = asyncio.create_task(data.write(payload))
            received = bytearray()
            while chunk := await data.read():
                received += chunk
                if len(received) == size:
                    break
            await sender
            await data.close()
            assert await data.read() == b""
            assert await error.read_all() == b""
            return hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()

        results = await asyncio.gather(roundtrip(20 << 20), *(roundtrip(4096 * (i + 1)) for i in range(20)))
        assert all(results)
        data, error = await forwarder.connect(81)
        assert b"nothing listens on 81" in await error.read_all()
        assert await data.read() == b""
        await forwarder.close()
    finally:
        await server.stop()
        echo.close()


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
@aio
async def test_websocket_exec(protocol):
    server = await streaming(FakeBackend())
    try:
        client = await WebSocketClient.open(exec_url(server, "cat", stdin=True, stderr=False), [protocol])
        assert client.protocol == protocol
        await client.send(0, b"hello over websocket")
        assert await client.read_until(1, 20) == b"hello over websocket"
        if protocol == "v5.channel.k8s.io":
            await client.close_channel(0)
            channels = await client.run_to_close()
            assert channels[3] == b'{"metadata":{},"status":"Success"}'
        await client.close()
        failed = await WebSocketClient.open(exec_url(server, "fail", "4"), [protocol])
        channels = await failed.run_to_close()
        assert b'"message":"4"' in channels[3]
    finally:
        await server.stop()


@aio
async def test_websocket_port_forward():
    echo, echo_port = await echo_server()
    server = await streaming(FakeBackend(echo_port))
    try:
        url = server.url_for_port_forward(PortForwardRequest("p1")) + "?port=80"
        client = await WebSocketClient.open(url, ["v4.channel.k8s.io"])
        assert await client.read_until(0, 2) == (80).to_bytes(2, "little")
        assert await client.read_until(1, 2) == (80).to_bytes(2, "little")
        await client.send(0, b"ping")
        assert await client.read_until(0, 6) == b"\x50\x00ping"
        await client.close()
    finally:
        await server.stop()
        echo.close()


@aio
async def test_plain_http_and_bad_upgrades_are_refused():
    server = await streaming(FakeBackend())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /exec/{exec_url(server, 'echo').rsplit('/', 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await reader.readline()).startswith(b"HTTP/1.1 400")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"garbage\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await server.stop()


def test_kubernetes_python_client_websocket_exec():
    """A third-party client: the official kubernetes Python client's channel WebSocket (v5, then v4)."""
    import threading

    from kubernetes.client import Configuration
    from kubernetes.stream.ws_client import WSClient

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(streaming(FakeBackend()), loop).result(10)
    try:
        url = exec_url(server, "cat", stdin=True, stderr=False).replace("http://", "ws://")
        client = WSClient(Configuration(), url, headers=None, capture_all=True)
        assert client.subprotocol == "v5.channel.k8s.io"
        client.write_stdin("from python\n")
        assert client.readline_stdout(timeout=10) == "from python"
        client.close_channel(0)
        client.run_forever(timeout=10)
        assert client.returncode == 0
        failing = WSClient(Configuration(), exec_url(server, "fail", "9").replace("http://", "ws://"),
                           headers=None, capture_all=True)
        failing.run_forever(timeout=10)
        assert failing.returncode == 9
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@aio
async def test_missing_streams_time_out_and_idle_sessions_end():
    backend = FakeBackend()
    server = await streaming(backend, stream_creation_timeout=0.2, idle_timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        # Only the error stream arrives: the server gives up on the rest, closes the connection, runs nothing.
        conn, _ = await spdy_connect(exec_url(server, "echo", "x"), ["v4.channel.k8s.io"])
        error = await conn.open_stream({"streamtype": "error"})
        await error.wait_reply()
        started = loop.time()
        await asyncio.wait_for(conn.done, 5)
        assert loop.time() - started < 5
        assert backend.ran == []
        # A session that goes quiet is closed after the idle timeout, and its command cancelled. The clock starts
        # before the open: the server counts from the last frame it read, which a loaded host may have read well
        # before the open returns here.
        started = loop.time()
        session = await SpdySession.open(exec_url(server, "hang", stdin=True, stderr=False), stdin=True,
                                         stderr=False)
        await asyncio.wait_for(session.conn.done, 5)
        waited = loop.time() - started
        assert waited >= 0.25, f"closed after {waited:.2f}s, before the 0.3 s idle timeout"
        await asyncio.wait_for(backend.cancelled.wait(), 5)
        assert backend.ran == ["hang"]
    finally:
        await server.stop()


@aio
async def test_tls(tmp_path):
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = await streaming(FakeBackend(), tls_cert=cert, tls_key=key)
    try:
        url = exec_url(server, "echo", "secret")
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        conn, _ = await spdy_connect(url, ["v4.channel.k8s.io"], tls=trust)
        await conn.close()
        with pytest.raises(ssl.SSLError):
            await spdy_connect(exec_url(server, "echo"), ["v4.channel.k8s.io"], tls=ssl.create_default_context())
    finally:
        await server.stop()


@aio
async def test_a_client_goaway_still_finishes_open_streams():
    server = await streaming(FakeBackend())
    try:
        session = await SpdySession.open(exec_url(server, "cat", stdin=True, stderr=False), stdin=True, stderr=False)
        from cri.streaming import spdy_frames
        session.conn._send(spdy_frames.encode_frame(spdy_frames.GoAway(0)))
        await session.write_stdin(b"after goaway")
        await session.close_stdin()
        result = await session.finish()
        assert (result.stdout, result.exit_code) == (b"after goaway", 0)
    finally:
        await server.stop()
