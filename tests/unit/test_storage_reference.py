"""Image reference parsing and normalisation, as kubelet and docker spell references."""

import pytest
from hypothesis import given, strategies as st

from storage.errors import InvalidReference
from storage.reference import is_short_name, parse, parse_image_id

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("someone/app:v1", "docker.io/someone/app:v1"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:v2", "localhost:5000/app:v2"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    ("Registry.Example/app", "Registry.Example/app:latest"),
    ("a.b/x__y-z.w:T_a.g-1", "a.b/x__y-z.w:T_a.g-1"),
    (f"gcr.io/app@{DIGEST}", f"gcr.io/app@{DIGEST}"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"gcr.io/app:v1@{DIGEST}", f"gcr.io/app:v1@{DIGEST}"),
])
def test_valid_references_normalise(text, expected):
    assert str(parse(text)) == expected


def test_parts_and_registry_reference():
    ref = parse(f"gcr.io/team/app:v1@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("gcr.io", "team/app", "v1", DIGEST)
    assert ref.reference == DIGEST  # a digest wins over the tag when asking the registry
    assert parse("gcr.io/team/app").reference == "latest"
    assert str(ref.with_digest("sha256:" + "cd" * 32)) == "gcr.io/team/app@sha256:" + "cd" * 32


@pytest.mark.parametrize("text", [
    "", " busybox", "busybox ", "bus box", "UPPER", "app:", ":tag", "app:-tag", "app:" + "t" * 129,
    "app@sha256:abc", "app@sha256:" + "AB" * 32, "app@md5", "a//b", "a/", "/a", "-a/b", "a_/b",
    "a..b/c/..", "../x", "a/b:c:d", "a" * 64, "a/" * 130 + "b",
    "exa mple.com/a", "example.com:port/a",
])
def test_invalid_references_are_rejected_naming_the_input(text):
    with pytest.raises(InvalidReference) as err:
        parse(text)
    assert repr(text) in str(err.value) or text == ""


def test_short_names_and_ids():
    assert is_short_name("busybox:1")
    assert is_short_name("team/app")
    assert is_short_name(f"app@{DIGEST}")
    assert not is_short_name("gcr.io/app") and not is_short_name("localhost:5000/app:1")
    assert parse_image_id("ab" * 32) == "sha256:" + "ab" * 32
    assert parse_image_id("sha256:" + "ab" * 32) == "sha256:" + "ab" * 32
    assert parse_image_id("ab" * 31) is None and parse_image_id("busybox") is None


@given(st.text(max_size=80))
def test_parse_never_fails_with_anything_but_invalid_reference(text):
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert parse(str(ref)) == ref  # a parsed reference round-trips
