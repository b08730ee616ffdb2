"""Pure pieces of pulling: platform choice in an index, chain ids, descriptors, the CRI user fields."""

import hashlib

import pytest

from cri.server.image_convert import user_fields
from storage.errors import UnsupportedManifest
from storage.manifest import descriptor
from storage.layers import chain_ids
from storage.manifest import choose_platform

OCI = "application/vnd.oci.image.manifest.v1+json"


def entry(digest_char: str, arch: str, variant: str = "", os_name: str = "linux", media_type: str = OCI) -> dict:
    platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": media_type, "digest": "sha256:" + digest_char * 64, "size": 1, "platform": platform}


INDEX = {"manifests": [entry("a", "arm", "v6"), entry("b", "arm", "v7"), entry("c", "arm64"),
                       entry("d", "amd64", os_name="windows"), entry("e", "amd64"),
                       entry("f", "unknown", os_name="unknown")]}


@pytest.mark.parametrize("platform, chosen", [
    (("amd64", ""), "e"),            # not the windows one listed first
    (("arm", "v7"), "b"),            # the exact variant
    (("arm64", "v8"), "c"),          # an entry without a variant serves any variant
])
def test_choose_platform(platform, chosen):
    assert choose_platform(INDEX, "x", platform)["digest"] == "sha256:" + chosen * 64


def test_no_matching_platform_names_what_the_index_has():
    with pytest.raises(UnsupportedManifest) as err:
        choose_platform(INDEX, "example.test/app:1", ("s390x", ""))
    message = str(err.value)
    assert "linux/s390x" in message
    assert "linux/arm/v7" in message
    assert "windows/amd64" in message
    with pytest.raises(UnsupportedManifest):
        choose_platform({"manifests": [entry("a", "amd64", media_type="application/vnd.oci.image.index.v1+json")]},
                        "nested", ("amd64", ""))


def test_chain_ids_follow_the_oci_definition():
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


@pytest.mark.parametrize("raw", [
    None, [], {"digest": "sha256:" + "a" * 64}, {"size": 1}, {"digest": "sha256:" + "a" * 64, "size": -1},
    {"digest": "sha256:" + "a" * 64, "size": True}, {"digest": "sha256:abc", "size": 1},
    {"digest": "sha512:" + "a" * 128, "size": 1},
])
def test_bad_descriptors_are_refused(raw):
    with pytest.raises(Exception) as err:
        descriptor(raw, "where")
    assert type(err.value).__name__ in ("UnsupportedManifest", "InvalidReference")


@pytest.mark.parametrize("user, expected", [
    ("", {}), ("0", {"uid": 0}), ("1000", {"uid": 1000}), ("1003:users", {"uid": 1003}),
    ("www-data", {"username": "www-data"}), ("www-data:100", {"username": "www-data"}),
])
def test_image_user_as_the_cri_reports_it(user, expected):
    fields = user_fields(user)
    assert {k: (v.value if k == "uid" else v) for k, v in fields.items()} == expected


def test_more_layers_than_overlayfs_can_stack_are_refused_at_pull():
    import json

    from storage.manifest import parse_image_manifest
    from storage.manifest import Manifest
    desc = {"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1}
    body = json.dumps({"schemaVersion": 2, "config": desc, "layers": [desc] * 501}).encode()
    with pytest.raises(UnsupportedManifest, match="501 layers"):
        parse_image_manifest(Manifest(body, OCI, "sha256:" + "b" * 64), "big")
    config, layers = parse_image_manifest(Manifest(json.dumps({"config": desc, "layers": [desc] * 500}).encode(), OCI, "d"), "ok")
    assert len(layers) == 500
