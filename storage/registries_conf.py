"""containers-registries.conf (v2), the file CRI-O and podman read: where a name is pulled from.

A reference is matched against the [[registry]] entry with the longest matching prefix; the
pull goes to the entry's mirrors (in order) and then to its location, with the prefix replaced
by the location. The requested name is never rewritten in what we report: a `PullSource` only
says where the bytes come from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import BlockedRegistry, RegistryConfigError
from storage.reference import DEFAULT_DOMAIN, Reference

DEFAULT_CONF = Path("/etc/containers/registries.conf")
_PULL_FROM_MIRROR = {"all", "digest-only", "tag-only"}


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class PullSource:
    """One place to try: the registry host (host[:port]) and the repository path there. `insecure`
    allows TLS without certificate checks and plain HTTP."""

    host: str
    repository: str
    insecure: bool
    is_mirror: bool = False


@dataclass(frozen=True)
class RegistriesConfig:
    registries: tuple[RegistryEntry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = field(default=())

    def search_domains(self) -> tuple[str, ...]:
        """Registries a short name is tried against, in order; docker.io when none is configured."""
        return self.unqualified_search_registries or (DEFAULT_DOMAIN,)

    def find(self, ref: Reference) -> RegistryEntry | None:
        """The entry whose prefix matches `ref` most specifically."""
        best: RegistryEntry | None = None
        best_score = -1
        for entry in self.registries:
            score = _match_score(entry.prefix, ref.name)
            if score > best_score:
                best, best_score = entry, score
        return best

    def pull_sources(self, ref: Reference) -> list[PullSource]:
        """Where to pull `ref` from, in the order to try; raises BlockedRegistry if blocked."""
        entry = self.find(ref)
        if entry is None:
            return [PullSource(_endpoint_host(ref.domain), ref.path, insecure=False)]
        if entry.blocked:
            raise BlockedRegistry(f"registry {entry.prefix!r} is blocked in registries.conf; cannot pull {ref}")
        sources: list[PullSource] = []
        for mirror in entry.mirrors:
            if mirror.pull_from_mirror == "digest-only" and not ref.digest:
                continue
            if mirror.pull_from_mirror == "tag-only" and ref.digest:
                continue
            sources.append(_rewrite(entry, ref, mirror.location, mirror.insecure, is_mirror=True))
        sources.append(_rewrite(entry, ref, entry.location, entry.insecure, is_mirror=False))
        return sources


def _match_score(prefix: str, name: str) -> int:
    """-1 when `prefix` does not match repository `name`; otherwise a specificity (longer wins).

    A prefix matches at a path boundary ("example.com/foo" matches "example.com/foo/bar" but not
    "example.com/foobar"); "*.example.com" matches any subdomain's host."""
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return len(prefix) if host.endswith(prefix[1:]) else -1
    if name == prefix or name.startswith(prefix + "/"):
        return len(prefix)
    return -1


def _endpoint_host(domain: str) -> str:
    """docker.io is served by registry-1.docker.io."""
    return "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain


def _rewrite(entry: RegistryEntry, ref: Reference, location: str, insecure: bool, *, is_mirror: bool) -> PullSource:
    if entry.prefix.startswith("*.") and location == entry.prefix:
        remapped = ref.name  # a wildcard entry without a location keeps the host
    elif entry.prefix.startswith("*."):
        remapped = location + ref.name[len(ref.domain):]  # a mirror of a wildcard entry
    else:
        remapped = location + ref.name[len(entry.prefix):]
    host, _, repository = remapped.partition("/")
    if not repository:
        raise RegistryConfigError(f"registries.conf location {location!r} leaves no repository for {ref}")
    if host == DEFAULT_DOMAIN and "/" not in repository:
        repository = f"library/{repository}"
    return PullSource(_endpoint_host(host), repository, insecure, is_mirror)


def _parse_entry(raw: dict[str, Any], source: Path) -> RegistryEntry:
    try:
        location = str(raw.get("location", "")).rstrip("/")
        prefix = str(raw.get("prefix") or location).rstrip("/")
        if not prefix:
            raise RegistryConfigError(f"{source}: a [[registry]] entry needs a prefix or a location")
        if prefix.startswith("*.") and location:
            raise RegistryConfigError(f"{source}: wildcard prefix {prefix!r} cannot have a location")
        mirrors = []
        for raw_mirror in raw.get("mirror", []):
            mode = raw_mirror.get("pull-from-mirror", "all")
            if mode not in _PULL_FROM_MIRROR:
                raise RegistryConfigError(f"{source}: mirror pull-from-mirror {mode!r} is not one of "
                                          f"{sorted(_PULL_FROM_MIRROR)}")
            mirrors.append(Mirror(str(raw_mirror["location"]).rstrip("/"), bool(raw_mirror.get("insecure", False)),
                                  mode))
        return RegistryEntry(prefix, location or prefix, bool(raw.get("insecure", False)),
                             bool(raw.get("blocked", False)), tuple(mirrors))
    except (KeyError, TypeError, AttributeError) as exc:
        raise RegistryConfigError(f"{source}: malformed [[registry]] entry {raw!r}: {exc}") from None


def parse_text(text: str, source: Path = Path("<text>")) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryConfigError(f"{source}: invalid TOML: {exc}") from None


def merge(documents: list[tuple[Path, dict[str, Any]]]) -> RegistriesConfig:
    """Fold the main file and its drop-ins (in order): a later entry with the same prefix replaces
    an earlier one, and a later unqualified-search-registries replaces the earlier list."""
    entries: dict[str, RegistryEntry] = {}
    search: tuple[str, ...] = ()
    for source, doc in documents:
        if "registries" in doc and "registry" not in doc:
            raise RegistryConfigError(f"{source}: registries.conf version 1 ([registries.*] tables) is not supported; "
                                      "use [[registry]]")
        if "unqualified-search-registries" in doc:
            search = tuple(str(item) for item in doc["unqualified-search-registries"])
        for raw in doc.get("registry", []):
            entry = _parse_entry(raw, source)
            entries[entry.prefix] = entry
    return RegistriesConfig(tuple(entries.values()), search)


def load(path: Path | None = DEFAULT_CONF, dropin_dir: Path | None = None) -> RegistriesConfig:
    """Read `path` and then the drop-ins `dropin_dir/*.conf` (default `<path>.d`, sorted by name);
    missing files mean no configuration."""
    if path is None:
        return RegistriesConfig()
    path = Path(path)
    files = [path] if path.is_file() else []
    dropin_dir = Path(dropin_dir) if dropin_dir is not None else Path(f"{path}.d")
    if dropin_dir.is_dir():
        files += sorted(p for p in dropin_dir.iterdir() if p.suffix == ".conf" and p.is_file())
    documents = []
    for file in files:
        try:
            documents.append((file, parse_text(file.read_text(), file)))
        except OSError as exc:
            raise RegistryConfigError(f"cannot read {file}: {exc}") from None
    return merge(documents)
