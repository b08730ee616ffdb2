"""The registry client's HTTP: keep-alive connections per thread and (scheme, host), TLS contexts, the choice of
scheme for an `insecure` registry, and requests whose network failures become storage errors. The socket
timeout is the pull-progress timeout: a read that waits that long without a byte aborts the pull."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from typing import Any

from storage.errors import PullTimeout, RegistryError, TransientRegistryError
from storage.manifest import MAX_MANIFEST_BYTES

USER_AGENT = "pycri/0.1"
INSECURE_HTTPS = "https+insecure"  # TLS without certificate checks, for registries.conf `insecure`


class _Connections(threading.local):
    """Keep-alive connections per thread, per (scheme, host)."""

    def __init__(self) -> None:
        self.pool: dict[tuple[str, str, float], http.client.HTTPConnection] = {}


_connections = _Connections()
_contexts: dict[bool, ssl.SSLContext] = {}
_insecure_schemes: dict[str, str] = {}  # insecure host -> the scheme it answered on


def _context(verify: bool) -> ssl.SSLContext:
    context = _contexts.get(verify)
    if context is None:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _contexts[verify] = context
    return context


def _connection(scheme: str, host: str, timeout: float) -> http.client.HTTPConnection:
    key = (scheme, host, timeout)
    conn = _connections.pool.get(key)
    if conn is None:
        if scheme == "http":
            conn = http.client.HTTPConnection(host, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection(host, timeout=timeout, context=_context(scheme == "https"))
        _connections.pool[key] = conn
    return conn


def insecure_scheme(host: str, timeout: float) -> str:
    """An `insecure` registry is tried over TLS without verification first, then over plain HTTP,
    as containers/image does; the answer is remembered for the life of the process."""
    scheme = _insecure_schemes.get(host)
    if scheme is None:
        conn = http.client.HTTPSConnection(host, timeout=min(timeout, 10.0), context=_context(False))
        try:
            conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
            conn.getresponse().read(65536)
            scheme = INSECURE_HTTPS
        except (OSError, http.client.HTTPException):
            scheme = "http"
        finally:
            conn.close()
        _insecure_schemes[host] = scheme
    return scheme


def drop_connection(scheme: str, host: str, timeout: float) -> None:
    """Close this thread's connection to (scheme, host): its answer was not read to the end, or it failed."""
    conn = _connections.pool.pop((scheme, host, timeout), None)
    if conn is not None:
        conn.close()


def discard(resp: http.client.HTTPResponse, scheme: str, host: str, timeout: float) -> bytes:
    """Read a (small) body we will not use; a connection with unread bytes left cannot be reused."""
    try:
        data = resp.read(65536)
    except (OSError, http.client.HTTPException):
        data = b""
    if not resp.isclosed():
        drop_connection(scheme, host, timeout)
    return data


def registry_message(body: bytes) -> str:
    """The registry's own words from an error body ({"errors":[{"code","message"}]}), if any."""
    try:
        errors = json.loads(body).get("errors") or []
        return ("; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
                or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


def send(scheme: str, host: str, method: str, path: str, headers: dict[str, Any], timeout: float,
         body: bytes | None = None) -> http.client.HTTPResponse:
    """One request on this thread's kept-alive connection; its answer's body is the caller's to read."""
    for attempt in (0, 1):  # a kept-alive connection the server closed gets one fresh retry
        conn = _connection(scheme, host, timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()
        except socket.timeout:
            drop_connection(scheme, host, timeout)
            raise PullTimeout(f"registry {host}: no answer for {timeout:g}s") from None
        except ssl.SSLError as exc:  # a certificate problem does not fix itself: no retries
            drop_connection(scheme, host, timeout)
            raise RegistryError(f"registry {host}: TLS: {exc}") from None
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            drop_connection(scheme, host, timeout)
            if attempt:
                raise TransientRegistryError(f"registry {host}: connection lost: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            drop_connection(scheme, host, timeout)
            raise TransientRegistryError(f"registry {host}: {exc or type(exc).__name__}") from None
    raise AssertionError("unreachable")


def simple(scheme: str, host: str, method: str, path: str, headers: dict[str, Any], timeout: float,
           body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request whose whole (small) answer is read; network failures become transient errors."""
    resp = send(scheme, host, method, path, headers, timeout, body)
    try:
        data = resp.read(MAX_MANIFEST_BYTES)
        if not resp.isclosed():
            drop_connection(scheme, host, timeout)
        return resp.status, resp.headers, data
    except socket.timeout:
        drop_connection(scheme, host, timeout)
        raise PullTimeout(f"registry {host}: no data for {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        drop_connection(scheme, host, timeout)
        raise TransientRegistryError(f"registry {host}: {exc or type(exc).__name__}") from None
