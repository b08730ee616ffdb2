"""A Distribution (Docker Registry HTTP API v2) client over http.client.

One `RegistryClient` talks to one `PullSource` (host, repository, http or https). It handles
anonymous, Basic and Bearer auth (challenge parsing, per-repository scope, a shared token cache),
redirects, and streams blobs into a sink while checking their digest and size. The socket timeout
is the pull-progress timeout: a read that waits that long without a byte aborts the pull.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from storage.auth import AuthFile, Credentials, parse_www_authenticate
from storage.errors import (AuthError, DigestMismatch, ImageNotFound, PullTimeout, RegistryError,
                            UnsupportedManifest)
from storage.reference import validate_digest
from storage.registries_conf import PullSource

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 << 20
CHUNK = 256 << 10
_MAX_REDIRECTS = 5
_USER_AGENT = "pycri/0.1"


class TransientRegistryError(RegistryError):
    """A failure worth retrying: a dropped connection, a 5xx, a 429."""


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except ValueError as exc:
            raise UnsupportedManifest(f"manifest {self.digest} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UnsupportedManifest(f"manifest {self.digest} is not a JSON object")
        return doc


class TokenCache:
    """Bearer tokens by (realm, service, scope, who), until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[Any, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> str | None:
        with self._lock:
            hit = self._tokens.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            self._tokens.pop(key, None)
            return None

    def drop(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def put(self, key: tuple[Any, ...], token: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10.0, lifetime * 0.5))


class _Connections(threading.local):
    """Keep-alive connections per thread, per (scheme, host)."""

    def __init__(self) -> None:
        self.pool: dict[tuple[str, str, float], http.client.HTTPConnection] = {}


_connections = _Connections()
_contexts: dict[bool, ssl.SSLContext] = {}
INSECURE_HTTPS = "https+insecure"  # TLS without certificate checks, for registries.conf `insecure`
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
            conn.request("GET", "/v2/", headers={"User-Agent": _USER_AGENT})
            conn.getresponse().read(65536)
            scheme = INSECURE_HTTPS
        except (OSError, http.client.HTTPException):
            scheme = "http"
        finally:
            conn.close()
        _insecure_schemes[host] = scheme
    return scheme


def _drop_connection(scheme: str, host: str, timeout: float) -> None:
    conn = _connections.pool.pop((scheme, host, timeout), None)
    if conn is not None:
        conn.close()


def _discard(resp: http.client.HTTPResponse, scheme: str, host: str, timeout: float) -> bytes:
    """Read a (small) body we will not use; a connection with unread bytes left cannot be reused."""
    try:
        data = resp.read(65536)
    except (OSError, http.client.HTTPException):
        data = b""
    if not resp.isclosed():
        _drop_connection(scheme, host, timeout)
    return data


def _registry_message(body: bytes) -> str:
    """The registry's own words from an error body ({"errors":[{"code","message"}]}), if any."""
    try:
        errors = json.loads(body).get("errors") or []
        return ("; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
                or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


class RegistryClient:
    """Talks to one repository on one registry endpoint. Thread-safe (connections are per thread)."""

    def __init__(self, source: PullSource, *, credentials: Credentials | None = None,
                 auth_file: AuthFile | None = None, token_cache: TokenCache | None = None,
                 progress_timeout: float = 60.0):
        self.source = source
        file_creds = auth_file.lookup(source.host, source.repository) if auth_file else None
        self.credentials = credentials if credentials and not credentials.empty else file_creds
        self.tokens = token_cache or TokenCache()
        self.timeout = progress_timeout
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._scope = f"repository:{source.repository}:pull"
        self._scheme: str | None = None
        self._token_key: tuple[Any, ...] | None = None

    @property
    def scheme(self) -> str:
        if self._scheme is None:
            self._scheme = insecure_scheme(self.source.host, self.timeout) if self.source.insecure else "https"
        return self._scheme

    @property
    def where(self) -> str:
        return f"{self.source.host}/{self.source.repository}"

    # ---- HTTP plumbing -------------------------------------------------------------------

    def _auth_header(self) -> str | None:
        creds = self.credentials
        if self._challenge is None:
            return None
        scheme, params = self._challenge
        if scheme == "basic":
            if creds and creds.username:
                raw = f"{creds.username}:{creds.password}".encode()
                return "Basic " + base64.b64encode(raw).decode()
            return None
        if scheme == "bearer":
            if creds and creds.registry_token:
                return f"Bearer {creds.registry_token}"
            return f"Bearer {self._bearer_token(params)}"
        return None

    def _bearer_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"registry {self.source.host}: Bearer challenge without a realm")
        service = params.get("service", "")
        creds = self.credentials
        # a token is only reused for the very same secrets, never for the same user name alone
        who = hashlib.sha256(repr((creds.username, creds.password, creds.identity_token)).encode()).hexdigest() \
            if creds else ""
        key = self._token_key = (realm, service, self._scope, who)
        token = self.tokens.get(key)
        if token:
            return token
        url = urllib.parse.urlsplit(realm)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise AuthError(f"registry {self.source.host}: token realm {realm!r} is not an http(s) URL")
        query = {"scope": self._scope}
        if service:
            query["service"] = service
        headers = {"User-Agent": _USER_AGENT}
        if creds and creds.identity_token:
            form = dict(query, grant_type="refresh_token", refresh_token=creds.identity_token, client_id="pycri")
            body, method, path = urllib.parse.urlencode(form).encode(), "POST", url.path or "/"
            if url.query:
                path += "?" + url.query
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            sep = "&" if url.query else ""
            path = (url.path or "/") + "?" + url.query + sep + urllib.parse.urlencode(query)
            body, method = None, "GET"
            if creds and creds.username:
                basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
                headers["Authorization"] = "Basic " + basic
        status, _, data = self._simple(url.scheme, url.netloc, method, path, headers, body)
        if status in (401, 403):
            raise AuthError(f"registry {self.source.host}: token server {url.netloc} refused the credentials "
                            f"(HTTP {status}): {_registry_message(data)}")
        if status != 200:
            raise TransientRegistryError(f"registry {self.source.host}: token server {url.netloc} answered HTTP "
                                         f"{status}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"registry {self.source.host}: token server {url.netloc} sent no valid JSON") from None
        if not token or not isinstance(token, str):
            raise AuthError(f"registry {self.source.host}: token server {url.netloc} sent no token")
        self.tokens.put(key, token, lifetime)
        return token

    def _simple(self, scheme: str, host: str, method: str, path: str, headers: dict[str, Any],
                body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request whose whole (small) answer is read; network failures become transient errors."""
        resp = self._send(scheme, host, method, path, headers, body)
        try:
            data = resp.read(MAX_MANIFEST_BYTES)
            if not resp.isclosed():
                _drop_connection(scheme, host, self.timeout)
            return resp.status, resp.headers, data
        except socket.timeout:
            _drop_connection(scheme, host, self.timeout)
            raise PullTimeout(f"registry {host}: no data for {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            _drop_connection(scheme, host, self.timeout)
            raise TransientRegistryError(f"registry {host}: {exc or type(exc).__name__}") from None

    def _send(self, scheme: str, host: str, method: str, path: str, headers: dict[str, Any],
              body: bytes | None = None) -> http.client.HTTPResponse:
        for attempt in (0, 1):  # a kept-alive connection the server closed gets one fresh retry
            conn = _connection(scheme, host, self.timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                return conn.getresponse()
            except socket.timeout:
                _drop_connection(scheme, host, self.timeout)
                raise PullTimeout(f"registry {host}: no answer for {self.timeout:g}s") from None
            except ssl.SSLError as exc:  # a certificate problem does not fix itself: no retries
                _drop_connection(scheme, host, self.timeout)
                raise RegistryError(f"registry {host}: TLS: {exc}") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                _drop_connection(scheme, host, self.timeout)
                if attempt:
                    raise TransientRegistryError(f"registry {host}: connection lost: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                _drop_connection(scheme, host, self.timeout)
                raise TransientRegistryError(f"registry {host}: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def _get(self, path: str, accept: str | None = None) -> http.client.HTTPResponse:
        """GET a registry path with auth and redirects; returns a 2xx response, raises otherwise."""
        scheme, host = self.scheme, self.source.host
        url_path = path
        authorised = False
        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"User-Agent": _USER_AGENT}
            if accept:
                headers["Accept"] = accept
            same_registry = (scheme, host) == (self.scheme, self.source.host)
            auth = self._auth_header() if same_registry else None
            if auth:
                headers["Authorization"] = auth
            resp = self._send(scheme, host, "GET", url_path, headers)
            if resp.status == 401 and same_registry and not authorised:
                data = _discard(resp, scheme, host, self.timeout)
                if self._token_key is not None:
                    self.tokens.drop(self._token_key)  # the registry no longer takes the cached token
                challenge = resp.headers.get("WWW-Authenticate", "")
                if not challenge:
                    raise AuthError(f"registry {host}: 401 without a WWW-Authenticate challenge: "
                                    f"{_registry_message(data)}")
                self._challenge = parse_www_authenticate(challenge)
                if self._challenge[0] not in ("basic", "bearer"):
                    raise AuthError(f"registry {host}: unsupported auth scheme {self._challenge[0]!r}")
                authorised = True
                continue
            if resp.status in (301, 302, 303, 307, 308):
                _discard(resp, scheme, host, self.timeout)
                location = resp.headers.get("Location")
                if not location:
                    raise RegistryError(f"registry {host}: redirect without a Location")
                base = f"{scheme.partition('+')[0]}://{host}{url_path}"
                target = urllib.parse.urlsplit(urllib.parse.urljoin(base, location))
                if target.scheme not in ("http", "https"):
                    raise RegistryError(f"registry {host}: redirect to unsupported URL {location!r}")
                same_host_tls = target.netloc == self.source.host and target.scheme == "https"
                scheme = self.scheme if same_host_tls and self.scheme == INSECURE_HTTPS else target.scheme
                host = target.netloc
                url_path = (target.path or "/") + (f"?{target.query}" if target.query else "")
                continue
            if 200 <= resp.status < 300:
                return resp
            message = _registry_message(_discard(resp, scheme, host, self.timeout))
            if resp.status in (401, 403):
                user = self.credentials.username if self.credentials else ""
                who = f"as {user!r}" if user else "anonymously"
                raise AuthError(f"registry {host}: access to {self.source.repository} denied {who} (HTTP "
                                f"{resp.status}): {message}")
            if resp.status == 404:
                raise ImageNotFound(f"registry {host}: {self.source.repository}: not found: {message}")
            if resp.status == 429 or resp.status >= 500:
                raise TransientRegistryError(f"registry {host}: HTTP {resp.status}: {message}")
            raise RegistryError(f"registry {host}: HTTP {resp.status} for {url_path}: {message}")
        raise RegistryError(f"registry {self.source.host}: too many redirects for {path}")

    # ---- API ----------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> Manifest:
        """Fetch a manifest by tag or digest, verified against the digest when one was asked for."""
        resp = self._get(f"/v2/{self.source.repository}/manifests/{reference}", ACCEPT)
        try:
            length = resp.getheader("Content-Length")
            if length is not None and int(length) > MAX_MANIFEST_BYTES:
                raise UnsupportedManifest(f"{self.where}:{reference}: manifest of {length} bytes exceeds "
                                          f"{MAX_MANIFEST_BYTES}")
            body = resp.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise UnsupportedManifest(f"{self.where}:{reference}: manifest exceeds {MAX_MANIFEST_BYTES} bytes")
        except socket.timeout:
            _drop_connection(self.scheme, self.source.host, self.timeout)
            raise PullTimeout(f"registry {self.source.host}: no data for {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            _drop_connection(self.scheme, self.source.host, self.timeout)
            raise TransientRegistryError(f"registry {self.source.host}: {exc}") from None
        except UnsupportedManifest:
            _drop_connection(self.scheme, self.source.host, self.timeout)
            raise
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatch(f"{self.where}: manifest {reference} arrived with digest {digest}")
        media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        manifest = Manifest(body, media_type, digest)
        doc = manifest.json()
        media_type = doc.get("mediaType") or media_type
        if media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise UnsupportedManifest(f"{self.where}:{reference}: Docker schema1 manifests are not supported "
                                      "(deprecated format); push the image again with a current client")
        if media_type not in INDEX_TYPES + IMAGE_MANIFEST_TYPES:
            media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else media_type
        if media_type not in INDEX_TYPES + IMAGE_MANIFEST_TYPES:
            raise UnsupportedManifest(f"{self.where}:{reference}: unsupported manifest type {media_type!r}")
        return Manifest(body, media_type, digest)

    def fetch_blob(self, digest: str, size: int, sink: Callable[[bytes], object]) -> None:
        """Stream a blob into `sink`, checking size and digest as bytes arrive; the caller discards
        what it wrote if this raises."""
        validate_digest(digest)
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256":
            raise UnsupportedManifest(f"{self.where}: digest algorithm {algorithm!r} is not supported")
        resp = self._get(f"/v2/{self.source.repository}/blobs/{digest}")
        hasher = hashlib.sha256()
        received = 0
        while True:
            try:
                chunk = resp.read(CHUNK)
            except socket.timeout:
                _drop_connection(self.scheme, self.source.host, self.timeout)
                raise PullTimeout(f"registry {self.source.host}: blob {digest}: no data for "
                                  f"{self.timeout:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                _drop_connection(self.scheme, self.source.host, self.timeout)
                raise TransientRegistryError(f"registry {self.source.host}: blob {digest}: "
                                             f"{exc or type(exc).__name__}") from None
            if not chunk:
                break
            received += len(chunk)
            try:
                if received > size:
                    raise DigestMismatch(f"{self.where}: blob {digest} is larger than the {size} bytes its descriptor "
                                         "says")
                hasher.update(chunk)
                sink(chunk)
            except BaseException:  # the rest of the body is unread: this connection is done
                _drop_connection(self.scheme, self.source.host, self.timeout)
                raise
        if received != size:
            if resp.length:  # the server promised more bytes than came: the connection dropped
                _drop_connection(self.scheme, self.source.host, self.timeout)
                raise TransientRegistryError(f"registry {self.source.host}: blob {digest}: connection closed after "
                                             f"{received} of {size} bytes")
            raise DigestMismatch(f"{self.where}: blob {digest} has {received} bytes, its descriptor says {size}")
        if hasher.hexdigest() != expected:
            raise DigestMismatch(f"{self.where}: blob {digest} arrived with digest sha256:{hasher.hexdigest()}")


_ARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
         "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
         "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


def host_platform() -> tuple[str, str]:
    """(architecture, variant) of this machine in OCI terms."""
    import platform
    machine = platform.machine()
    return _ARCH.get(machine, (machine, ""))


def choose_platform(index: dict[str, Any], where: str, platform: tuple[str, str] | None = None) -> dict[str, Any]:
    """The descriptor for linux/<arch>(/<variant>) in an index; an exact variant beats none."""
    arch, variant = platform or host_platform()
    candidates = []
    seen = []
    for desc in index.get("manifests") or []:
        if not isinstance(desc, dict):
            continue
        plat = desc.get("platform") or {}
        seen.append("/".join(filter(None, (plat.get("os"), plat.get("architecture"), plat.get("variant")))) or "?")
        if plat.get("os") != "linux" or plat.get("architecture") != arch:
            continue
        if desc.get("mediaType") not in IMAGE_MANIFEST_TYPES + (None,):
            continue
        want = plat.get("variant", "")
        if want == variant:
            candidates.append((0, desc))
        elif not want or not variant:
            candidates.append((1, desc))
    if not candidates:
        raise UnsupportedManifest(f"{where}: no image for linux/{arch}{'/' + variant if variant else ''} "
                                  f"in the index (it has: {', '.join(seen) or 'nothing'})")
    return min(candidates, key=lambda item: item[0])[1]
