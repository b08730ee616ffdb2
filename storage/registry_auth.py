"""Registry auth: the Authorization header a challenge asks for (Basic, or Bearer with a token from the token
server, fetched with the credentials or a refresh token), and the token cache shared by all pulls."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from typing import Any

from storage.auth import Credentials
from storage.errors import AuthError, TransientRegistryError
from storage.registry_http import USER_AGENT, registry_message, simple

TokenKey = tuple[Any, ...]


class TokenCache:
    """Bearer tokens by (realm, service, scope, who), until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[TokenKey, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            hit = self._tokens.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            self._tokens.pop(key, None)
            return None

    def drop(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def put(self, key: TokenKey, token: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10.0, lifetime * 0.5))


def basic_header(creds: Credentials | None) -> str | None:
    if creds and creds.username:
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()
    return None


def token_key(params: dict[str, str], scope: str, creds: Credentials | None) -> TokenKey:
    """The cache key of a Bearer challenge's token: a token is only reused for the very same secrets, never for
    the same user name alone."""
    who = hashlib.sha256(repr((creds.username, creds.password, creds.identity_token)).encode()).hexdigest() \
        if creds else ""
    return params.get("realm", ""), params.get("service", ""), scope, who


def bearer_token(registry: str, params: dict[str, str], scope: str, creds: Credentials | None,
                 tokens: TokenCache, timeout: float) -> str:
    """A token for `scope` from the challenge's realm: cached, or asked of the token server."""
    realm = params.get("realm")
    if not realm:
        raise AuthError(f"registry {registry}: Bearer challenge without a realm")
    service = params.get("service", "")
    key = token_key(params, scope, creds)
    token = tokens.get(key)
    if token:
        return token
    url = urllib.parse.urlsplit(realm)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise AuthError(f"registry {registry}: token realm {realm!r} is not an http(s) URL")
    query = {"scope": scope}
    if service:
        query["service"] = service
    headers = {"User-Agent": USER_AGENT}
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
        basic = basic_header(creds)
        if basic:
            headers["Authorization"] = basic
    status, _, data = simple(url.scheme, url.netloc, method, path, headers, timeout, body)
    if status in (401, 403):
        raise AuthError(f"registry {registry}: token server {url.netloc} refused the credentials "
                        f"(HTTP {status}): {registry_message(data)}")
    if status != 200:
        raise TransientRegistryError(f"registry {registry}: token server {url.netloc} answered HTTP {status}")
    try:
        doc = json.loads(data)
        token = doc.get("token") or doc.get("access_token")
        lifetime = float(doc.get("expires_in") or 60)
    except (ValueError, AttributeError, TypeError):
        raise AuthError(f"registry {registry}: token server {url.netloc} sent no valid JSON") from None
    if not token or not isinstance(token, str):
        raise AuthError(f"registry {registry}: token server {url.netloc} sent no token")
    tokens.put(key, token, lifetime)
    return token
