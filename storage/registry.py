"""A Distribution (Docker Registry HTTP API v2) client over http.client.

One `RegistryClient` talks to one `PullSource` (host, repository, http or https). It handles
anonymous, Basic and Bearer auth (challenges, per-repository scope, a shared token cache: registry_auth.py),
redirects, and streams blobs into a sink while checking their digest and size. Connections and the socket
timeout, which is the pull-progress timeout, are registry_http.py's.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import urllib.parse
from typing import Any, Callable

from storage.auth import AuthFile, Credentials, parse_www_authenticate
from storage.errors import (AuthError, DigestMismatch, ImageNotFound, PullTimeout, RegistryError,
                            TransientRegistryError, UnsupportedManifest)
from storage.manifest import ACCEPT, MAX_MANIFEST_BYTES, Manifest, classify
from storage.reference import validate_digest
from storage.registries_conf import PullSource
from storage.registry_auth import TokenCache, basic_header, bearer_token, token_key
from storage.registry_http import (INSECURE_HTTPS, USER_AGENT, discard, drop_connection, insecure_scheme,
                                   registry_message, send)

CHUNK = 256 << 10
_MAX_REDIRECTS = 5


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
            return basic_header(creds)
        if scheme == "bearer":
            if creds and creds.registry_token:
                return f"Bearer {creds.registry_token}"
            self._token_key = token_key(params, self._scope, creds)
            return "Bearer " + bearer_token(self.source.host, params, self._scope, creds, self.tokens, self.timeout)
        return None

    def _get(self, path: str, accept: str | None = None) -> http.client.HTTPResponse:
        """GET a registry path with auth and redirects; returns a 2xx response, raises otherwise."""
        scheme, host = self.scheme, self.source.host
        url_path = path
        authorised = False
        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"User-Agent": USER_AGENT}
            if accept:
                headers["Accept"] = accept
            same_registry = (scheme, host) == (self.scheme, self.source.host)
            auth = self._auth_header() if same_registry else None
            if auth:
                headers["Authorization"] = auth
            resp = send(scheme, host, "GET", url_path, headers, self.timeout)
            if resp.status == 401 and same_registry and not authorised:
                data = discard(resp, scheme, host, self.timeout)
                if self._token_key is not None:
                    self.tokens.drop(self._token_key)  # the registry no longer takes the cached token
                challenge = resp.headers.get("WWW-Authenticate", "")
                if not challenge:
                    raise AuthError(f"registry {host}: 401 without a WWW-Authenticate challenge: "
                                    f"{registry_message(data)}")
                self._challenge = parse_www_authenticate(challenge)
                if self._challenge[0] not in ("basic", "bearer"):
                    raise AuthError(f"registry {host}: unsupported auth scheme {self._challenge[0]!r}")
                authorised = True
                continue
            if resp.status in (301, 302, 303, 307, 308):
                discard(resp, scheme, host, self.timeout)
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
            message = registry_message(discard(resp, scheme, host, self.timeout))
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
            drop_connection(self.scheme, self.source.host, self.timeout)
            raise PullTimeout(f"registry {self.source.host}: no data for {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            drop_connection(self.scheme, self.source.host, self.timeout)
            raise TransientRegistryError(f"registry {self.source.host}: {exc}") from None
        except UnsupportedManifest:
            drop_connection(self.scheme, self.source.host, self.timeout)
            raise
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatch(f"{self.where}: manifest {reference} arrived with digest {digest}")
        media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        return classify(body, media_type, digest, f"{self.where}:{reference}")

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
                drop_connection(self.scheme, self.source.host, self.timeout)
                raise PullTimeout(f"registry {self.source.host}: blob {digest}: no data for "
                                  f"{self.timeout:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                drop_connection(self.scheme, self.source.host, self.timeout)
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
                drop_connection(self.scheme, self.source.host, self.timeout)
                raise
        if received != size:
            if resp.length:  # the server promised more bytes than came: the connection dropped
                drop_connection(self.scheme, self.source.host, self.timeout)
                raise TransientRegistryError(f"registry {self.source.host}: blob {digest}: connection closed after "
                                             f"{received} of {size} bytes")
            raise DigestMismatch(f"{self.where}: blob {digest} has {received} bytes, its descriptor says {size}")
        if hasher.hexdigest() != expected:
            raise DigestMismatch(f"{self.where}: blob {digest} arrived with digest sha256:{hasher.hexdigest()}")
