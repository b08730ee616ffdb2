"""Image volumes (KEP-4639), as kubelet sends them: it pulls the image, then puts the image_ref PullImage returned
in a CRI Mount's `image`. The container sees that image's root filesystem (or its image_sub_path) read-only at the
mount's path; the image cannot be removed while mounted; ContainerStatus reports the mount; nothing stays mounted
after removal, a failure, or a daemon crash."""

from __future__ import annotations

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.imagebuild import Entry, build_image, tar_layer
from tests.integration.helpers_containers import container_config, create, exec_sync, run, status, wait_state
from tests.integration.helpers_sandboxes import mounts_below

pytestmark = pytest.mark.integration


def pull_data_image(d, registry) -> str:  # noqa: F811
    """A two-layer image of plain files (no shell): its image_ref, as kubelet gets it from PullImage."""
    image = build_image([tar_layer([Entry("models", "dir"), Entry("models/m.bin", data=b"weights-old"),
                                    Entry("models/readme", data=b"read me")]),
                         tar_layer([Entry("models/m.bin", data=b"weights")])])
    registry.push("vol/models", "1", image)
    return d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="example.test/vol/models:1")),
                              timeout=60).image_ref


def image_mount(path: str, ref: str, sub_path: str = "") -> api_pb2.Mount:
    return api_pb2.Mount(container_path=path, image=api_pb2.ImageSpec(image=ref), image_sub_path=sub_path)


def test_an_image_volume_is_the_images_files_read_only_and_keeps_the_image(env, registry):  # noqa: F811
    d, pod, cfg = env
    ref = pull_data_image(d, registry)
    cid = run(d, pod, cfg, container_config("reader", ["sleep", "600"], mounts=[
        image_mount("/models", ref), image_mount("/only", ref, "models")]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    out = exec_sync(d, cid, ["cat", "/models/models/m.bin", "/only/readme"])
    assert out.exit_code == 0 and out.stdout == b"weightsread me", out.stderr
    denied = exec_sync(d, cid, ["touch", "/models/models/new"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.stderr
    mounts = status(d, cid).status.mounts
    assert [(m.container_path, m.image.image, m.image_sub_path, m.readonly) for m in mounts] == [
        ("/models", ref, "", True), ("/only", ref, "models", True)]
    # ImageSpec.image_ref (CRI v1.36): the digest the volume uses, as the pod's imageID shows an image
    digest = d.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))).image.repo_digests[0]
    assert [m.image.image_ref for m in mounts] == [digest, digest]

    with pytest.raises(grpc.RpcError) as err:
        d.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and cid in err.value.details()

    # a crash keeps the mounts and the restarted daemon still cleans up
    d.kill()
    d.start()
    assert exec_sync(d, cid, ["cat", "/only/readme"]).stdout == b"read me"
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    # the volumes go with the container's root, reclaimed in the background; RemoveImage waits for that
    d.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert [m for m in mounts_below(d.base) if cid in m] == []
    assert not d.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))).HasField("image")


@pytest.mark.parametrize("mount, code, message", [
    (image_mount("/v", "example.test/vol/absent:1"), grpc.StatusCode.NOT_FOUND, "example.test/vol/absent:1"),
    (image_mount("/v", "REF", "no/such/dir"), grpc.StatusCode.INVALID_ARGUMENT, "no/such/dir"),
    (image_mount("/v", "REF", "../../etc"), grpc.StatusCode.INVALID_ARGUMENT, "../../etc"),
    (api_pb2.Mount(container_path="/v", host_path="/tmp", image=api_pb2.ImageSpec(image="REF")),
     grpc.StatusCode.INVALID_ARGUMENT, "mutually exclusive"),
])
def test_bad_image_volumes_fail_naming_the_problem_and_leave_nothing(env, registry, mount, code, message):  # noqa: F811
    d, pod, cfg = env
    ref = pull_data_image(d, registry)
    if mount.image.image == "REF":
        mount.image.image = ref
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("bad", ["true"], mounts=[mount]))
    assert err.value.code() == code and message in err.value.details(), err.value.details()
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []
    assert [m for m in mounts_below(d.base) if "/storage/containers/" in m] == []
    d.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))  # not held by the failure
