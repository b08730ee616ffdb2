"""Pinned image patterns: exact (normalised names and ids), glob and keyword, as CRI-O reads them."""

import pytest

from storage.errors import InvalidReference
from storage.pinned import PinnedImages

ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize("pattern, names, pinned", [
    ("busybox", ["docker.io/library/busybox:latest"], True),
    ("busybox:1.36", ["docker.io/library/busybox:latest"], False),
    ("registry.k8s.io/pause:3.10", ["registry.k8s.io/pause:3.10"], True),
    ("registry.k8s.io/pause", ["registry.k8s.io/pause:3.10"], False),
    (f"registry.k8s.io/pause@sha256:{'cd' * 32}", [f"registry.k8s.io/pause@sha256:{'cd' * 32}"], True),
    (ID, [], True),
    ("ab" * 32, [], True),
    ("registry.k8s.io/*", ["registry.k8s.io/pause:3.10"], True),
    ("registry.k8s.io/*", ["docker.io/registry.k8s.io:1"], False),
    ("*pause*", ["registry.k8s.io/pause:3.10"], True),
    ("*pause*", ["docker.io/library/busybox:latest"], False),
])
def test_patterns(pattern, names, pinned):
    assert PinnedImages([pattern]).pinned(ID, names) is pinned


def test_a_record_pinned_at_import_is_pinned_without_patterns():
    assert PinnedImages([]).pinned(ID, ["example.test/a:1"], recorded=True)
    assert not PinnedImages([]).pinned(ID, ["example.test/a:1"])


@pytest.mark.parametrize("pattern", ["exa*mple", "*", "**", "*a*b*", "Not A/Ref"])
def test_bad_patterns_are_refused_naming_them(pattern):
    with pytest.raises(InvalidReference, match="pinned image pattern"):
        PinnedImages([pattern])
