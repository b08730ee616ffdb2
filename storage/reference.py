"""Image references: parsing and normalisation as docker/distribution define them.

`parse("busybox")` is `docker.io/library/busybox:latest`, which is what kubelet expects back.
Pure functions only; every invalid input raises InvalidReference naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}
_MAX_NAME = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX_RE = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference: domain, repository path, and a tag or a digest (or both)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository name with its domain, e.g. docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        """The canonical by-digest form, name@digest, as RepoDigests lists it."""
        return Reference(self.domain, self.path, None, digest)

    def with_domain(self, domain: str, path: str) -> "Reference":
        return Reference(domain, path, self.tag, self.digest)


def validate_digest(digest: str) -> str:
    """Return `digest` if it is a well-formed digest; sha256 digests must be 64 lowercase hex."""
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(f"invalid digest {digest!r}")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm == "sha256" and not _SHA256_HEX_RE.fullmatch(hex_part):
        raise InvalidReference(f"invalid sha256 digest {digest!r}")
    return digest


def _split_domain(name: str) -> tuple[str | None, str]:
    """Separate the registry host from the path, as docker does: a first component is a host if it
    has a dot or a colon, is localhost, or has upper-case letters."""
    first, sep, rest = name.partition("/")
    if not sep:
        return None, name
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, rest
    return None, name


def parse(text: str, *, default_domain: str = DEFAULT_DOMAIN) -> Reference:
    """Parse and normalise `text`; a short name gets `default_domain` (library/ on docker.io) and
    :latest when it has neither tag nor digest."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("empty image reference")
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise InvalidReference(f"invalid image reference {text!r}: contains whitespace")
    remainder, at, digest = text.partition("@")
    if at:
        try:
            validate_digest(digest)
        except InvalidReference:
            raise InvalidReference(f"invalid image reference {text!r}: bad digest {digest!r}") from None
    # a tag follows the last ':' that comes after the last '/', so host:port is not a tag
    tag = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid image reference {text!r}: bad tag {tag!r}")
    domain, path = _split_domain(remainder)
    if domain is not None and not _DOMAIN_RE.fullmatch(domain):
        raise InvalidReference(f"invalid image reference {text!r}: bad registry host {domain!r}")
    if not path or not all(_PATH_COMPONENT_RE.fullmatch(part) for part in path.split("/")):
        raise InvalidReference(f"invalid image reference {text!r}: bad repository name {path!r}"
                               " (lowercase letters, digits and separators only)")
    if domain is None and _SHA256_HEX_RE.fullmatch(path):
        raise InvalidReference(f"invalid image reference {text!r}: a 64-hex name is an image id, not a repository")
    if domain is None:
        domain = default_domain
    if domain in _LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise InvalidReference(f"invalid image reference {text!r}: name longer than {_MAX_NAME} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest if at else None)


def is_short_name(text: str) -> bool:
    """Whether `text` names no registry host (so registries.conf search rules apply)."""
    remainder = text.partition("@")[0]
    slash, colon = remainder.rfind("/"), remainder.rfind(":")
    if colon > slash:
        remainder = remainder[:colon]
    return _split_domain(remainder)[0] is None


def parse_image_id(text: str) -> str | None:
    """`sha256:<64 hex>` for a full image id given with or without the prefix, else None."""
    hex_part = text[7:] if text.startswith("sha256:") else text
    return f"sha256:{hex_part}" if _SHA256_HEX_RE.fullmatch(hex_part) else None
