"""After an unclean shutdown the image store is verified: a torn blob drops its image (logged), and a
pull brings it back; after a clean one nothing is re-read."""

from __future__ import annotations

import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_registry import write_registries_conf

pytestmark = pytest.mark.integration


def image_status(d, ref):
    return d.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))).image


def test_a_torn_blob_found_after_a_crash_drops_its_image_until_pulled_again(daemon_factory, registry, busybox_ref,
                                                                            tmp_path):
    conf = write_registries_conf(tmp_path / "registries.conf", registry)
    d = daemon_factory({"storage": {"registries_conf": str(conf)}})
    image_id = d.client().pull(busybox_ref)
    blobs = sorted((d.root / "storage" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    torn = blobs[-1]  # the layer
    d.kill()
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    d.start()
    assert image_status(d, busybox_ref).id == ""
    assert not torn.exists()
    assert "dropped image" in d.log_path.read_text()
    assert d.client().pull(busybox_ref) == image_id
    assert image_status(d, busybox_ref).id == image_id


def test_a_clean_restart_keeps_images_without_verifying(daemon_factory, registry, busybox_ref, tmp_path):
    conf = write_registries_conf(tmp_path / "registries.conf", registry)
    d = daemon_factory({"storage": {"registries_conf": str(conf)}})
    image_id = d.client().pull(busybox_ref)
    d.restart()
    assert image_status(d, busybox_ref).id == image_id
    assert "image store verified" not in d.log_path.read_text()
