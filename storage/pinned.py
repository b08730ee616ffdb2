"""Which images are pinned: kubelet's image garbage collector never removes an image reported `pinned`.

An image is pinned when its record says so (`pycri image import --pin`) or when one of its names
matches a configured pattern, with CRI-O's three kinds of pattern:
    exact     "registry.k8s.io/pause:3.10", "busybox" (normalised: docker.io/library/busybox:latest),
              or an image id
    glob      "registry.k8s.io/*"   (one `*`, at the end: a prefix of a name)
    keyword   "*pause*"             (a `*` at both ends: a substring of a name)
"""

from __future__ import annotations

from dataclasses import dataclass

from storage import reference as refs
from storage.errors import InvalidReference


@dataclass(frozen=True)
class _Pattern:
    kind: str    # "exact", "glob" or "keyword"
    text: str

    def matches(self, name: str) -> bool:
        if self.kind == "glob":
            return name.startswith(self.text)
        if self.kind == "keyword":
            return self.text in name
        return name == self.text


def parse_pattern(pattern: str) -> _Pattern:
    """Raise InvalidReference naming the pattern when it is none of the three kinds."""
    if pattern.startswith("*") and pattern.endswith("*") and len(pattern) > 2 and "*" not in pattern[1:-1]:
        return _Pattern("keyword", pattern[1:-1])
    if pattern.endswith("*") and "*" not in pattern[:-1] and len(pattern) > 1:
        return _Pattern("glob", pattern[:-1])
    if "*" in pattern:
        raise InvalidReference(f"pinned image pattern {pattern!r}: '*' may only end a pattern (glob) or "
                               "begin and end it (keyword)")
    image_id = refs.parse_image_id(pattern)
    if image_id:
        return _Pattern("exact", image_id)
    try:
        ref = refs.parse(pattern)
    except InvalidReference as exc:
        raise InvalidReference(f"pinned image pattern {pattern!r}: {exc}") from None
    return _Pattern("exact", str(ref.with_digest(ref.digest)) if ref.digest else str(ref))


class PinnedImages:
    """The configured patterns, parsed once."""

    def __init__(self, patterns: list[str]):
        self.patterns = [parse_pattern(p) for p in patterns]

    def pinned(self, image_id: str, names: list[str], recorded: bool = False) -> bool:
        """Whether an image with this id and these names (repo tags and digests) is pinned."""
        if recorded:
            return True
        return any(p.matches(name) for p in self.patterns for name in (image_id, *names))
