"""CheckpointContainer against the real daemon, as kubelet's forensic checkpoint calls it. Where `criu check` fails
(criu 3.17 on this host's 6.18 kernel: vDSO) it is FAILED_PRECONDITION naming the failure, and so is a restore from
an archive; where CRIU works, the archive holds what CRI-O writes and the container keeps running."""

from __future__ import annotations

import subprocess
import tarfile

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, create, exec_sync, run, wait_state

pytestmark = pytest.mark.integration


def criu_works() -> bool:
    return subprocess.run(["criu", "check"], capture_output=True, timeout=60).returncode == 0


def checkpoint(d, cid: str, location: str) -> None:
    d.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id=cid, location=location,
                                                                     timeout=120), timeout=180)


def test_checkpoint_a_running_container(env, tmp_path):  # noqa: F811
    d, pod, cfg = env
    cid = run(d, pod, cfg, container_config("ckpt", ["sh", "-c", "echo data > /tmp/made; rm /etc/group; sleep 600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    location = tmp_path / "checkpoints" / "checkpoint-ckpt.tar"
    if not criu_works():
        with pytest.raises(grpc.RpcError) as err:
            checkpoint(d, cid, str(location))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "`criu check` fails on this host" in err.value.details()
        assert cid in err.value.details()
        assert not location.parent.exists() or list(location.parent.iterdir()) == []
        return
    checkpoint(d, cid, str(location))
    assert exec_sync(d, cid, ["cat", "/tmp/made"]).stdout == b"data\n"  # still running
    with tarfile.open(location) as tar:
        names = set(tar.getnames())
        diff = tarfile.open(fileobj=tar.extractfile("rootfs-diff.tar"))
        assert diff.extractfile("tmp/made").read() == b"data\n"
        assert "etc/.wh.group" in diff.getnames()
    assert {"config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files", "checkpoint"} <= names
    assert any(n.startswith("checkpoint/") and n.endswith(".img") for n in names)


def test_bad_checkpoint_requests(env, tmp_path):  # noqa: F811
    d, pod, cfg = env
    created = create(d, pod, cfg, container_config("idle", ["true"]))
    for cid, location, code in ((created, str(tmp_path / "a.tar"), grpc.StatusCode.FAILED_PRECONDITION),
                                (created, "relative.tar", grpc.StatusCode.INVALID_ARGUMENT),
                                ("0" * 64, str(tmp_path / "b.tar"), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as err:
            checkpoint(d, cid, location)
        assert err.value.code() == code, err.value.details()


def test_a_checkpoint_archive_as_the_image_is_refused_naming_why(env, tmp_path):  # noqa: F811
    d, pod, cfg = env
    work = tmp_path / "work"
    (work / "checkpoint").mkdir(parents=True)
    (work / "config.dump").write_text("{}")
    (work / "spec.dump").write_text("{}")
    with tarfile.open(tmp_path / "archive.tar", "w") as tar:
        for name in ("config.dump", "spec.dump", "checkpoint"):
            tar.add(work / name, arcname=name)
    config = container_config("restored", ["true"])
    config.image.image = str(tmp_path / "archive.tar")
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, config)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(tmp_path / "archive.tar") in err.value.details()
    assert ("`criu check` fails" if not criu_works() else "does not restore") in err.value.details()
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))).containers) == []
