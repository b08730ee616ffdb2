"""The streaming HTTP server: the URLs Exec/Attach/PortForward return lead here.

A deliberately small HTTP/1.1 front: read one request head, find the token in the path, and upgrade the
connection to SPDY/3.1 or WebSocket; nothing else is served.  Tokens are single-use and expire after a minute,
so a URL is worth one session only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from .backend import AttachRequest, ExecRequest, PortForwardRequest, StreamingBackend, StreamRequest
from .tokens import TOKEN_TTL, TokenCache

# The protocol modules (SPDY, WebSocket and wsproto/h11 below it) are imported at the first upgrade
# of each kind: an idle node never streams, and they are a few MB of the daemon's resident memory.

log = logging.getLogger(__name__)

MAX_HEAD = 16 << 10
READ_BUFFER = 1 << 20  # StreamReader limit: also how much it buffers before pausing the socket
HEAD_TIMEOUT = 10.0
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KINDS = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or []


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of a header, over all its occurrences."""
        return [part.strip() for value in self.headers.get(name, []) for part in value.split(",") if part.strip()]

    def first(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0].strip() if values else ""


def parse_request_head(head: bytes) -> HttpRequest:
    """Parse a request line and headers (without the body); BadRequest on anything malformed."""
    try:
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError as e:
        raise BadRequest(400, "Bad Request", "malformed request line") from e
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise BadRequest(400, "Bad Request", "unsupported request")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "Bad Request", "malformed header line")
        headers.setdefault(name.lower(), []).append(value.strip())
    try:
        url = urlsplit(target)
        query = parse_qs(url.query)
    except ValueError as e:
        raise BadRequest(400, "Bad Request", "malformed request target") from e
    return HttpRequest(method, url.path, query, headers)


def negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol in the client's order of preference that we support."""
    return next((p for p in offered if p in supported), None)


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


def render_response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    if status != 101:
        lines += [f"Content-Length: {len(body)}", "Content-Type: text/plain; charset=utf-8", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def advertised_host(address: str) -> str:
    """The host part of our URLs: the listen address, or the outbound interface address when listening on all."""
    host = address
    if address in ("", "0.0.0.0", "::"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(("192.0.2.1", 9))  # no packet is sent: this only asks the routing table
                host = probe.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class Settings(Protocol):
    """What the server reads of its configuration (cri/config.py's StreamingConfig)."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def stream_creation_timeout(self) -> float: ...


class StreamingServer:
    """Serves exec, attach and port-forward sessions for requests registered through ``url_for_*``."""

    def __init__(self, config: Settings, backend: StreamingBackend, *, token_ttl: float = TOKEN_TTL) -> None:
        self._config = config
        self._backend = backend
        self._tokens = TokenCache(ttl=token_ttl)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.port = config.port
        self._base_url = ""

    @property
    def base_url(self) -> str:
        """Where clients reach us; fixed at start() (finding the host may take a routing lookup)."""
        if not self._base_url:
            scheme = "https" if self._tls_enabled else "http"
            self._base_url = f"{scheme}://{advertised_host(self._config.address)}:{self.port}"
        return self._base_url

    @property
    def _tls_enabled(self) -> bool:
        return bool(self._config.tls_cert and self._config.tls_key)

    def url_for_exec(self, request: ExecRequest) -> str:
        return f"{self.base_url}/exec/{self._tokens.issue(request)}"

    def url_for_attach(self, request: AttachRequest) -> str:
        return f"{self.base_url}/attach/{self._tokens.issue(request)}"

    def url_for_port_forward(self, request: PortForwardRequest) -> str:
        return f"{self.base_url}/portforward/{self._tokens.issue(request)}"

    async def start(self) -> None:
        tls = None
        cert, key = self._config.tls_cert, self._config.tls_key
        if cert and key:  # (_tls_enabled)
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cert, key)
        self._server = await asyncio.start_server(self._serve_connection, self._config.address or None,
                                                  self._config.port, ssl=tls, limit=READ_BUFFER)
        self.port = self._server.sockets[0].getsockname()[1]
        self._base_url = ""
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening and end every session (their backends see cancellation and clean up)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # (asyncio runs each connection's callback as a task)
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except BadRequest as e:
            writer.write(render_response(e.status, e.reason, e.headers, (str(e) + "\n").encode()))
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the session is over; asyncio's stream callback would log a cancelled handler as an error
        except Exception:
            log.exception("streaming session failed")
        finally:
            self._sessions.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (ConnectionError, OSError, TimeoutError, asyncio.CancelledError):
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise BadRequest(431, "Request Header Fields Too Large", "request head too large")
        request = parse_request_head(head)
        if request.method not in ("GET", "POST"):
            raise BadRequest(405, "Method Not Allowed", "only GET and POST are served")
        stream_request = self._lookup(request.path)
        upgrade = request.first("upgrade").lower()
        if "upgrade" not in [v.lower() for v in request.values("connection")] or not upgrade:
            raise BadRequest(400, "Bad Request", "unable to upgrade: missing upgrade headers in request")
        if upgrade == "websocket":
            await self._serve_websocket(request, stream_request, reader, writer)
        elif upgrade == "spdy/3.1":
            await self._serve_spdy(request, stream_request, reader, writer)
        else:
            raise BadRequest(400, "Bad Request", f"unable to upgrade: unsupported protocol {upgrade!r}")

    def _lookup(self, path: str) -> StreamRequest:
        """The request behind /<kind>/<token>; 404 when unknown, used, expired or of another kind."""
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] in _KINDS:
            stream_request = self._tokens.consume(parts[1])
            if stream_request is not None and isinstance(stream_request, _KINDS[parts[0]]):
                return stream_request
        raise BadRequest(404, "Not Found", "404 page not found")

    async def _serve_spdy(self, request: HttpRequest, stream_request: StreamRequest,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from . import portforward, remotecommand
        from .spdy import SpdyConnection

        is_port_forward = isinstance(stream_request, PortForwardRequest)
        supported = (portforward.PROTOCOL,) if is_port_forward else remotecommand.SPDY_PROTOCOLS
        offered = request.values("x-stream-protocol-version")
        # A client that offers nothing predates negotiation: it speaks the oldest protocol.
        protocol = negotiate(offered, supported) if offered else supported[-1]
        if protocol is None:
            raise BadRequest(403, "Forbidden", f"unable to upgrade: unable to negotiate protocol: client supports "
                             f"{offered}, server accepts {list(supported)}",
                             [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
        writer.write(render_response(101, "Switching Protocols", [
            ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)]))
        cfg = self._config
        conn = SpdyConnection(reader, writer, server=True, idle_timeout=cfg.idle_timeout)
        conn.start()
        try:
            if isinstance(stream_request, PortForwardRequest):
                await portforward.serve_spdy(conn, stream_request, self._backend, cfg.stream_creation_timeout)
            else:
                await remotecommand.serve_spdy(conn, protocol, stream_request, self._backend,
                                               cfg.stream_creation_timeout)
        finally:
            await conn.close()

    async def _serve_websocket(self, request: HttpRequest, stream_request: StreamRequest,
                               reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from . import portforward, tunnel, websocket

        key = request.first("sec-websocket-key")
        if not key or request.first("sec-websocket-version") != "13":
            raise BadRequest(400, "Bad Request", "websocket upgrade needs Sec-WebSocket-Key and version 13")
        is_port_forward = isinstance(stream_request, PortForwardRequest)
        supported = ((tunnel.PROTOCOL, *websocket.PORTFORWARD_PROTOCOLS) if is_port_forward
                     else websocket.REMOTECOMMAND_PROTOCOLS)
        offered = request.values("sec-websocket-protocol")
        protocol = negotiate(offered, supported) if offered else ""
        if protocol is None:
            raise BadRequest(400, "Bad Request", f"requested protocol(s) {offered} are not supported")
        ports: list[int] = []
        if isinstance(stream_request, PortForwardRequest) and protocol != tunnel.PROTOCOL:
            try:
                ports = [portforward.parse_port(p) for p in request.query.get("port", [])]
            except ValueError as e:
                raise BadRequest(400, "Bad Request", str(e)) from e
            ports = ports or list(stream_request.ports)
            if not ports:
                raise BadRequest(400, "Bad Request", "query parameter \"port\" is required")
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", websocket_accept(key))]
        if protocol:
            headers.append(("Sec-WebSocket-Protocol", protocol))
        writer.write(render_response(101, "Switching Protocols", headers))
        if protocol == tunnel.PROTOCOL:
            assert isinstance(stream_request, PortForwardRequest)  # (only port-forward is offered the tunnel)
            await self._serve_tunnel(stream_request, reader, writer)
            return
        channels = websocket.WebSocketChannels(reader, writer, protocol, idle_timeout=self._config.idle_timeout)
        try:
            if isinstance(stream_request, PortForwardRequest):
                await websocket.serve_port_forward(channels, stream_request, ports, self._backend)
            else:
                await websocket.serve_remotecommand(channels, stream_request, self._backend)
        finally:
            await channels.close()

    async def _serve_tunnel(self, stream_request: PortForwardRequest, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """Port-forward's SPDY protocol, carried inside WebSocket binary messages."""
        from wsproto.connection import Connection, ConnectionType

        from . import portforward, tunnel
        from .spdy import SpdyConnection

        pipe = tunnel.WebSocketTunnel(Connection(ConnectionType.SERVER), reader, writer)
        conn = SpdyConnection(pipe.reader, pipe.writer, server=True, idle_timeout=self._config.idle_timeout)
        conn.start()
        try:
            await portforward.serve_spdy(conn, stream_request, self._backend, self._config.stream_creation_timeout)
        finally:
            await conn.close()
