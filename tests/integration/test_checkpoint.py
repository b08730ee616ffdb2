"""CheckpointContainer against the real daemon, as kubelet's forensic checkpoint calls it. Where `criu check` fails
(criu 3.17 on this host's 6.18 kernel: vDSO) it is FAILED_PRECONDITION naming the failure, and so is a restore from
an archive; where CRIU works (the node VM), the archive holds what CRI-O writes, the container keeps running, and
the archive restored as a new container continues from the checkpointed state."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import (container_config, create, exec_sync, log_lines, pod_config, run,
                                                 start_env, status, wait_state)
from tests.integration.helpers_sandboxes import wait_until

pytestmark = pytest.mark.integration


# What the daemon says when it cannot checkpoint here: no CRIU at all (a fresh Debian 12: `make install` does not add
# it), or one whose `criu check` fails on this kernel.
NO_CRIU = re.compile(r"`criu check` fails on this host|CRIU \(criu\) is not installed")


@pytest.fixture
def env(daemon_factory, registry, tmp_path):
    """conftest's env on runc: Debian's crun is built without CRIU (no +CRIU in `crun --version`), so only a
    runc pod's containers can be checkpointed there (a crun one is refused saying so: tests/unit/test_oci_checkpoint.py)."""
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"default_runtime": "runc"}})


def criu_works() -> bool:
    return (shutil.which("criu") is not None
            and subprocess.run(["criu", "check"], capture_output=True, timeout=60).returncode == 0)


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
        assert NO_CRIU.search(err.value.details()), err.value.details()
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
    assert str(tmp_path / "archive.tar") in err.value.details()
    if criu_works():  # then the archive itself is what is wrong with it
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "spec.dump is not an OCI runtime spec" in err.value.details()
    else:
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert NO_CRIU.search(err.value.details()), err.value.details()
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))).containers) == []
    assert not [p for p in d.state_dir.joinpath("containers").iterdir() if p.name.startswith(".restore-")]


COUNTER = "i=0; rm /etc/group; while :; do i=$((i+1)); echo $i > /tmp/count; echo $i; sleep 1; done"


@pytest.mark.parametrize("new_pod", [False, True], ids=["same-pod", "new-pod"])
def test_restore_continues_a_checkpointed_container(env, tmp_path, new_pod):  # noqa: F811
    """Checkpoint a counting container, remove it, restore the archive as a new container (in its pod or another):
    it goes on counting from where it was, with its rootfs changes, then stops and is removed like any other."""
    if not criu_works():
        pytest.skip("no working CRIU here: restore is refused with FAILED_PRECONDITION (test above)")
    d, first_pod, first_cfg = env
    pod, cfg = first_pod, first_cfg
    if new_pod:
        cfg = pod_config(Path(first_cfg.log_directory), name=f"restored-{uuid.uuid4().hex[:8]}")
        pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    try:
        _checkpoint_and_restore(d, first_pod, first_cfg, pod, cfg, tmp_path)
    finally:
        if new_pod:
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
            d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def _checkpoint_and_restore(d, first_pod, first_cfg, pod, cfg, tmp_path) -> None:
    marker = f"counter-{uuid.uuid4().hex[:12]}"
    cid = run(d, first_pod, first_cfg, container_config("counter", ["sh", "-c", COUNTER, marker]))
    deadline = time.monotonic() + 120
    while _count(d, cid) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    location = tmp_path / "counter.tar"
    checkpoint(d, cid, str(location))
    with tarfile.open(location) as tar:
        diff = tarfile.open(fileobj=tar.extractfile("rootfs-diff.tar"))
        at_checkpoint = int(diff.extractfile("tmp/count").read())
    assert at_checkpoint >= 3
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=60)

    config = container_config("restored", ["ignored"], labels={"restored": "yes"})
    config.image.image = str(location)
    restored = create(d, pod, cfg, config)
    st = status(d, restored).status
    assert st.state == api_pb2.CONTAINER_CREATED
    assert st.metadata.name == "restored" and st.labels["restored"] == "yes"
    d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=restored), timeout=360)
    assert wait_state(d, restored, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    deadline = time.monotonic() + 60
    while len(log_lines(cfg, "restored")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    counted = [int(text) for stream, _, text in log_lines(cfg, "restored") if stream == "stdout"]
    assert counted and counted[0] >= at_checkpoint, counted  # the shell's own i went on: not a fresh start
    assert _count(d, restored) > at_checkpoint
    assert exec_sync(d, restored, ["test", "-e", "/etc/group"]).exit_code == 1  # deleted before the checkpoint

    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=restored, timeout=5), timeout=60)
    st = wait_state(d, restored, api_pb2.CONTAINER_EXITED)
    assert st.state == api_pb2.CONTAINER_EXITED
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=restored), timeout=60)
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))).containers) == []
    assert not _processes_with(marker)
    # the bundle goes with the reclaim that runs in the background after RemoveContainer's reply
    bundle = d.state_dir.joinpath("containers", restored)
    wait_until(lambda: not bundle.exists(), f"the bundle {bundle} is gone", timeout=30)


def _count(d, cid) -> int:
    out = exec_sync(d, cid, ["cat", "/tmp/count"]).stdout.strip()
    return int(out) if out.isdigit() else 0


def _processes_with(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            pass
    return found
