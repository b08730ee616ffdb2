"""A restore the runtime fails, on any host: a stand-in `criu` that passes `criu check` and a stand-in `runc` whose
checkpoint writes a CRIU-less image directory and whose restore fails as CRIU does (an Error line in restore.log).
The real daemon, conmon and runc do everything else: the container ends exited with CRIU's reason, StartContainer is
INTERNAL naming it, and removal leaves nothing (daemon_factory checks). The real restore is test_checkpoint.py's, in
the node VM."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.core.containers.restore import CHECKPOINT_ANNOTATION
from tests.imagebuild import Entry, Image, build_image, tar_layer
from tests.integration.helpers_containers import (IMAGE, container_config, create, run, start_env, status,
                                                 wait_state)
from tests.integration.helpers_sandboxes import wait_until

pytestmark = pytest.mark.integration

FAKE_RUNC = """#!/usr/bin/python3
import os, sys
argv = sys.argv[1:]
verb = next((a for a in argv if a in ("checkpoint", "restore")), None)
if verb is None:
    os.execv(REAL, [REAL, *argv])
opt = lambda name: argv[argv.index(name) + 1]
if verb == "checkpoint":
    os.makedirs(opt("--image-path"), exist_ok=True)
    open(os.path.join(opt("--image-path"), "inventory.img"), "w").write("not CRIU's")
    sys.exit(0)
open(os.path.join(opt("--work-path"), "restore.log"), "w").write(
    "(00.01) Warn: nothing\\n(00.02) Error (criu/cr-restore.c:1): stand-in CRIU cannot restore\\n")
sys.stderr.write("criu failed: type RESTORE errno 0\\n")
sys.exit(1)
"""


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "criu").write_text("#!/bin/sh\n[ \"$1\" = check ] && exit 0\nexit 1\n")
    (bin_dir / "runc").write_text(FAKE_RUNC.replace("REAL", repr(shutil.which("runc")), 2))
    for tool in ("criu", "runc"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # the daemon inherits it


@pytest.fixture
def env_with_stand_ins(stand_ins, daemon_factory, registry, tmp_path):
    # runc, the handler the stand-in wraps (and the one Debian builds with CRIU; its crun cannot checkpoint)
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"default_runtime": "runc"}})


def test_a_failed_restore_ends_the_container_with_crius_reason(env_with_stand_ins, tmp_path):
    d, pod, cfg = env_with_stand_ins
    cid = run(d, pod, cfg, container_config("orig", ["sh", "-c", "echo x > /tmp/made; sleep 600"]))
    location = tmp_path / "orig.tar"
    d.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location)),
                                  timeout=120)
    with tarfile.open(location) as tar:
        assert "checkpoint/inventory.img" in tar.getnames()
    config = container_config("restored", ["ignored"])
    config.image.image = str(location)
    restored = create(d, pod, cfg, config)
    assert status(d, restored).status.state == api_pb2.CONTAINER_CREATED
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=restored), timeout=120)
    assert err.value.code() == grpc.StatusCode.INTERNAL, err.value.details()
    assert "stand-in CRIU cannot restore" in err.value.details() and str(location) in err.value.details()
    st = wait_state(d, restored, api_pb2.CONTAINER_EXITED)
    assert (st.state, st.reason) == (api_pb2.CONTAINER_EXITED, "StartError")
    assert "stand-in CRIU cannot restore" in st.message
    for container in (restored, cid):
        d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container, timeout=0), timeout=60)
        d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container), timeout=60)
    # the bundle goes with the reclaim that runs in the background after RemoveContainer's reply
    bundle = d.state_dir.joinpath("containers", restored)
    wait_until(lambda: not bundle.exists(), f"the bundle {bundle} is gone", timeout=30)


def test_a_restore_without_the_checkpointed_bind_mounts_is_refused(env_with_stand_ins, tmp_path):
    d, pod, cfg = env_with_stand_ins
    data = tmp_path / "data"
    data.mkdir()
    mount = api_pb2.Mount(container_path="/data", host_path=str(data))
    cid = run(d, pod, cfg, container_config("orig", ["sleep", "600"], mounts=[mount]))
    location = tmp_path / "orig.tar"
    d.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location)),
                                  timeout=120)
    config = container_config("restored", ["ignored"])
    config.image.image = str(location)
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "expects these mounts" in err.value.details() and "/data" in err.value.details()
    assert [c.id for c in d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers] == [cid]
    assert not [p for p in d.state_dir.joinpath("containers").iterdir() if p.name.startswith(".restore-")]
    config.mounts.append(mount)
    restored = create(d, pod, cfg, config)  # with the mount asked again it is made
    assert status(d, restored).status.mounts[0].container_path == "/data"


def test_a_restored_container_not_yet_started_survives_a_daemon_restart(env_with_stand_ins, tmp_path):
    d, pod, cfg = env_with_stand_ins
    cid = run(d, pod, cfg, container_config("orig", ["sleep", "600"]))
    location = tmp_path / "orig.tar"
    d.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location)),
                                  timeout=120)
    config = container_config("restored", ["ignored"])
    config.image.image = str(location)
    restored = create(d, pod, cfg, config)
    d.restart()  # records are written behind the replies: a clean stop lets the last land (a kill may lose it,
    # and then the create is undone like any whose write was lost)
    assert status(d, restored).status.state == api_pb2.CONTAINER_CREATED  # still to be restored, not undone
    with pytest.raises(grpc.RpcError) as err:  # and StartContainer still restores it (the stand-in fails)
        d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=restored), timeout=120)
    assert "stand-in CRIU cannot restore" in err.value.details()
    assert wait_state(d, restored, api_pb2.CONTAINER_EXITED).reason == "StartError"


def _hand_made_archive(tmp_path, diff_entries) -> str:
    """An archive with good dumps of the test image and a rootfs-diff.tar holding `diff_entries`."""
    diff = io.BytesIO()
    with tarfile.open(fileobj=diff, mode="w") as tar:
        for name, kind, link, data in diff_entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    spec = {"process": {"args": ["sleep", "600"], "cwd": "/"}, "root": {"path": "rootfs"}, "mounts": []}
    members = {"config.dump": json.dumps({"rootfsImageName": IMAGE}).encode(), "spec.dump": json.dumps(spec).encode(),
               "checkpoint/inventory.img": b"x", "rootfs-diff.tar": diff.getvalue()}
    path = tmp_path / "hand-made.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("entries, message", [
    ([("escape", tarfile.SYMTYPE, "/", b""), ("escape/etc/evil", tarfile.REGTYPE, "", b"x")], "symlink"),
    ([("../../evil", tarfile.REGTYPE, "", b"x")], "contains '..'"),
])
def test_a_hostile_rootfs_diff_is_refused_and_undone(env_with_stand_ins, tmp_path, entries, message):
    d, pod, cfg = env_with_stand_ins
    config = container_config("restored", ["ignored"])
    config.image.image = _hand_made_archive(tmp_path, entries)
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "rootfs-diff.tar" in err.value.details() and message in err.value.details()
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []
    assert list(d.state_dir.joinpath("containers").iterdir()) == []
    assert not os.path.exists("/etc/evil") and not (tmp_path.parent / "evil").exists()


def checkpoint_image(archive: Path, annotations: dict[str, str]) -> Image:
    """CRI-O's checkpoint OCI image (what `buildah add` of the archive and `buildah config --annotation` make):
    one layer holding the archive's files, the annotation on the manifest."""
    entries = [Entry("checkpoint", "dir")]
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                entries.append(Entry(member.name, data=tar.extractfile(member).read()))
    image = build_image([tar_layer(entries)])
    manifest = json.loads(image.manifest)
    manifest["annotations"] = annotations
    return Image(json.dumps(manifest).encode(), image.config, image.blobs)


def test_a_checkpoint_oci_image_is_restored_like_the_archive(env_with_stand_ins, registry, tmp_path):
    d, pod, cfg = env_with_stand_ins
    cid = run(d, pod, cfg, container_config("orig", ["sleep", "600"]))
    location = tmp_path / "orig.tar"
    d.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location)),
                                  timeout=120)
    registry.push("ctr/checkpoint", "1", checkpoint_image(location, {CHECKPOINT_ANNOTATION: "orig"}))
    ref = "example.test/ctr/checkpoint:1"
    d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    config = container_config("restored", ["ignored"])
    config.image.image = ref
    restored = create(d, pod, cfg, config)
    st = status(d, restored).status
    assert st.state == api_pb2.CONTAINER_CREATED and st.image.image == IMAGE  # the checkpointed container's image
    with pytest.raises(grpc.RpcError) as err:  # StartContainer restores from the image's CRIU files
        d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=restored), timeout=120)
    assert "stand-in CRIU cannot restore" in err.value.details() and ref in err.value.details()
    for container in (restored, cid):
        d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container), timeout=60)
    # without the annotation the same image is an ordinary one (it has no shell: its create fails as any would)
    registry.push("ctr/checkpoint", "2", checkpoint_image(location, {}))
    d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref[:-1] + "2")), timeout=60)
    config = container_config("plain", ["sh"])
    config.image.image = ref[:-1] + "2"
    plain = create(d, pod, cfg, config)
    assert status(d, plain).status.image.image == ref[:-1] + "2"
