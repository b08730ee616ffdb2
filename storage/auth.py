"""Registry credentials: the CRI AuthConfig fields, docker-style auth files, WWW-Authenticate.

Pure parsing helpers plus a small immutable `Credentials` value; the token exchange itself is
in registry.py, where the HTTP connection is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path

from storage.errors import RegistryConfigError


@dataclass(frozen=True)
class Credentials:
    """What the caller may give: user and password, an identity (refresh) token, or a ready
    registry (bearer) token. `auth` in the CRI and in auth files is base64("user:password")."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:  # never print secrets into logs or errors
        return f"Credentials(username={self.username!r}, secrets=<hidden>)"

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @classmethod
    def from_fields(cls, username: str = "", password: str = "", auth: str = "", identity_token: str = "",
                    registry_token: str = "") -> "Credentials":
        if auth and not username:
            username, password = decode_auth(auth)
        return cls(username, password, identity_token, registry_token)


def decode_auth(auth: str) -> tuple[str, str]:
    """base64("user:password") -> (user, password); raises RegistryConfigError on anything else."""
    try:
        text = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise RegistryConfigError("the auth field is not base64 of 'user:password'") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise RegistryConfigError("the auth field is not base64 of 'user:password'")
    return user, password


def _normalise_auth_key(key: str) -> str:
    """Auth file keys come as 'https://host/v1/', 'host', or 'host/namespace'; make them 'host[/path]'."""
    key = re.sub(r"^[a-z]+://", "", key).rstrip("/")
    if key.endswith("/v1") or key.endswith("/v2"):
        key = key[:-3]
    if key in ("index.docker.io", "registry-1.docker.io"):
        key = "docker.io"
    return key


@dataclass(frozen=True)
class AuthFile:
    """A docker config.json / containers auth.json: {"auths": {"<key>": {"auth": ..., "identitytoken": ...}}}."""

    entries: tuple[tuple[str, Credentials], ...] = ()

    @classmethod
    def load(cls, path: Path | None) -> "AuthFile":
        if path is None or not Path(path).is_file():
            return cls()
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise RegistryConfigError(f"cannot read auth file {path}: {exc}") from None
        return cls.from_doc(doc, str(path))

    @classmethod
    def from_doc(cls, doc: object, source: str = "<auth file>") -> "AuthFile":
        auths = doc.get("auths", {}) if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise RegistryConfigError(f"{source}: 'auths' must be an object")
        entries = []
        for key, value in auths.items():
            if not isinstance(value, dict):
                raise RegistryConfigError(f"{source}: entry {key!r} must be an object")
            creds = Credentials.from_fields(username=value.get("username", ""), password=value.get("password", ""),
                                            auth=value.get("auth", ""), identity_token=value.get("identitytoken", ""),
                                            registry_token=value.get("registrytoken", ""))
            entries.append((_normalise_auth_key(key), creds))
        return cls(tuple(entries))

    def lookup(self, domain: str, repository: str = "") -> Credentials | None:
        """The most specific entry for domain/repository: 'host/ns/repo', then 'host/ns', then 'host'."""
        wanted = _normalise_auth_key(domain)
        best, best_len = None, -1
        full = f"{wanted}/{repository}" if repository else wanted
        for key, creds in self.entries:
            if (full == key or full.startswith(key + "/")) and len(key) > best_len:
                best, best_len = creds, len(key)
        return best


_CHALLENGE_RE = re.compile(r'([a-zA-Z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://a/token",service="reg",scope="repository:x:pull"' -> ('bearer', {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_RE.finditer(rest)}
    return scheme.lower(), params
