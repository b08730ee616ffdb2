"""The ImageService over CRI against a real daemon and a real registry, as kubelet and crictl use it."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.imagebuild import Entry, build_busybox_image
from tests.integration.helpers_registry import write_registries_conf
from tests.integration.fake_registry import EMPTY, FakeRegistry, leftovers

pytestmark = pytest.mark.integration


def spec(image: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image)


@pytest.fixture
def mapped_daemon(daemon_factory, registry, private_registry, tmp_path):
    """A daemon whose registries.conf sends example.test and private.test to the test registries."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f"""unqualified-search-registries = []
[[registry]]
prefix = "example.test"
location = "{registry.host}"
insecure = true
[[registry]]
prefix = "private.test/team"
location = "{private_registry.host}/team"
insecure = true
""")
    return daemon_factory({"storage": {"registries_conf": str(conf)}})


def test_pull_status_list_remove_through_a_remapped_registry(mapped_daemon, registry):
    image = build_busybox_image(config={"User": "1000:1000", "Labels": {"tier": "test"}})
    digest = registry.push("cri/busybox", "1.0", image)
    images = mapped_daemon.images
    ref = images.PullImage(api_pb2.PullImageRequest(image=spec("example.test/cri/busybox:1.0"))).image_ref
    assert ref == image.id
    # the requested name is what we report, never the location it came from
    by_tag = images.ImageStatus(api_pb2.ImageStatusRequest(image=spec("example.test/cri/busybox:1.0"), verbose=True))
    assert by_tag.image.id == image.id
    assert list(by_tag.image.repo_tags) == ["example.test/cri/busybox:1.0"]
    assert list(by_tag.image.repo_digests) == [f"example.test/cri/busybox@{digest}"]
    assert by_tag.image.uid.value == 1000 and by_tag.image.username == ""
    assert by_tag.image.size > 0
    assert "chainIDs" in by_tag.info["info"]
    for name in (f"example.test/cri/busybox@{digest}", image.id, image.id[7:19]):
        assert images.ImageStatus(api_pb2.ImageStatusRequest(image=spec(name))).image.id == image.id, name
    listed = images.ListImages(api_pb2.ListImagesRequest()).images
    assert [i.id for i in listed] == [image.id]
    filtered = images.ListImages(api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec("nothing.test/x:1"))))
    assert list(filtered.images) == []
    fs = images.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    assert fs.image_filesystems[0].used_bytes.value > 0
    assert fs.image_filesystems[0].inodes_used.value > 0
    assert len(fs.container_filesystems) == 1
    # a second tag on the same image; removing by one tag removes the image with both
    registry.push("cri/busybox", "latest", image)
    images.PullImage(api_pb2.PullImageRequest(image=spec("example.test/cri/busybox")))
    assert len(images.ImageStatus(api_pb2.ImageStatusRequest(image=spec(image.id))).image.repo_tags) == 2
    images.RemoveImage(api_pb2.RemoveImageRequest(image=spec("example.test/cri/busybox:1.0")))
    assert not images.ImageStatus(api_pb2.ImageStatusRequest(image=spec(image.id))).HasField("image")
    assert list(images.ListImages(api_pb2.ListImagesRequest()).images) == []
    # removing what is not there is not an error
    images.RemoveImage(api_pb2.RemoveImageRequest(image=spec("example.test/cri/busybox:1.0")))


def test_unknown_image_status_is_empty_and_bad_requests_name_the_problem(mapped_daemon):
    images = mapped_daemon.images
    assert not images.ImageStatus(api_pb2.ImageStatusRequest(image=spec("example.test/no/such:1"))).HasField("image")
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(api_pb2.PullImageRequest(image=spec("Not A/Ref")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not A/Ref" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(api_pb2.PullImageRequest(image=spec("example.test/no/such:1")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no/such" in err.value.details()


def test_private_registry_needs_the_credentials_kubelet_passes(mapped_daemon, private_registry):
    image = build_busybox_image(extra_layers=[[Entry("etc/secret", data=b"x")]])
    private_registry.push("team/app", "v1", image)
    images = mapped_daemon.images
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(api_pb2.PullImageRequest(image=spec("private.test/team/app:v1")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert private_registry.host in err.value.details()
    user, password = private_registry.credentials
    wrong = api_pb2.AuthConfig(username=user, password="wrong")
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(api_pb2.PullImageRequest(image=spec("private.test/team/app:v1"), auth=wrong))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert repr(user) in err.value.details()
    right = api_pb2.AuthConfig(username=user, password=password)
    ref = images.PullImage(api_pb2.PullImageRequest(image=spec("private.test/team/app:v1"), auth=right)).image_ref
    assert ref == image.id
    status = images.ImageStatus(api_pb2.ImageStatusRequest(image=spec("private.test/team/app:v1"))).image
    assert list(status.repo_tags) == ["private.test/team/app:v1"]


def test_a_broken_registries_conf_stops_the_daemon_naming_the_file(daemon_factory, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text("[[registry]\nprefix = 'x'\n")
    with pytest.raises(RuntimeError) as err:
        daemon_factory({"storage": {"registries_conf": str(conf)}})
    assert str(conf) in str(err.value) and "invalid TOML" in str(err.value)


def test_a_daemon_killed_mid_pull_shows_and_keeps_nothing_after_restart(daemon_factory, tmp_path):
    fake = FakeRegistry()
    try:
        image = build_busybox_image()
        fake.serve("slow/app", "1", image)
        fake.stall_after[f"/v2/slow/app/blobs/{json.loads(image.manifest)['layers'][0]['digest']}"] = 1000
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nprefix = "slow.test"\nlocation = "{fake.host}"\ninsecure = true\n')
        daemon = daemon_factory({"storage": {"registries_conf": str(conf)}})
        pending = daemon.images.PullImage.future(api_pb2.PullImageRequest(image=spec("slow.test/slow/app:1")))
        ingest = daemon.root / "storage" / "ingest"
        deadline = time.monotonic() + 30
        while not os.listdir(ingest):
            assert time.monotonic() < deadline, "the pull never started downloading"
            time.sleep(0.02)
        daemon.kill()
        pending.cancel()
        daemon.start()
        assert list(daemon.images.ListImages(api_pb2.ListImagesRequest()).images) == []
        assert leftovers(daemon.root / "storage") == EMPTY
    finally:
        fake.close()


def test_other_rooms_get_busybox_with_two_lines(daemon_factory, registry, busybox_ref, tmp_path):
    conf = write_registries_conf(tmp_path / "registries.conf", registry)
    daemon = daemon_factory({"storage": {"registries_conf": str(conf)}})
    client = daemon.client()
    try:
        image_id = client.pull(busybox_ref)
    finally:
        client.close()
    status = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=spec(busybox_ref))).image
    assert status.id == image_id and list(status.repo_tags) == [busybox_ref]
