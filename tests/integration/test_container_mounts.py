"""Bind mounts with propagation (private, rslave, rshared) observed both ways, and volumes from the image."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_container_helpers import (container_config, create, env, exec_sync, registry,  # noqa: F401
                                                      run, status, wait_state)

pytestmark = pytest.mark.integration


@pytest.fixture
def host_mount(tmp_path):
    """A tmpfs on the host; the test decides its propagation. Unmounted (with what is below it) afterwards."""
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source)], check=True)
    try:
        yield source
    finally:
        subprocess.run(["umount", "-R", "-l", str(source)], capture_output=True)


CRI_PROPAGATION = {"private": api_pb2.PROPAGATION_PRIVATE, "rslave": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
                   "rshared": api_pb2.PROPAGATION_BIDIRECTIONAL}


@pytest.mark.parametrize("propagation,host_to_container,container_to_host", [
    ("private", False, False), ("rslave", True, False), ("rshared", True, True)])
def test_mount_propagation_both_ways(env, host_mount, propagation, host_to_container, container_to_host):
    d, pod, pod_cfg = env
    if propagation != "private":
        subprocess.run(["mount", "--make-rshared", str(host_mount)], check=True)
    mount = api_pb2.Mount(container_path="/mnt/src", host_path=str(host_mount),
                          propagation=CRI_PROPAGATION[propagation])
    cid = run(d, pod, pod_cfg, container_config("prop", ["sleep", "600"], mounts=[mount],
                                                linux=api_pb2.LinuxContainerConfig(
                                                    security_context=api_pb2.LinuxContainerSecurityContext(
                                                        privileged=True))))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert status(d, cid).status.mounts[0].propagation == CRI_PROPAGATION[propagation]
    (host_mount / "fromhost").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(host_mount / "fromhost")], check=True)
    (host_mount / "fromhost" / "flag").write_text("x")
    seen = exec_sync(d, cid, ["ls", "/mnt/src/fromhost"]).stdout
    assert (seen == b"flag\n") is host_to_container
    r = exec_sync(d, cid, ["sh", "-c", "mkdir -p /mnt/src/fromctr && mount -t tmpfs none /mnt/src/fromctr && "
                                       "touch /mnt/src/fromctr/flag"])
    assert r.exit_code == 0, r.stderr
    assert (host_mount / "fromctr" / "flag").exists() is container_to_host


def test_propagation_the_host_mount_cannot_carry_is_refused(env, host_mount):
    d, pod, pod_cfg = env
    subprocess.run(["mount", "--make-private", str(host_mount)], check=True)
    mount = api_pb2.Mount(container_path="/mnt/src", host_path=str(host_mount),
                          propagation=api_pb2.PROPAGATION_BIDIRECTIONAL)
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("bad", ["true"], mounts=[mount]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "shared" in err.value.details()


def test_readonly_bind_and_symlinked_host_path(env, tmp_path):
    d, pod, pod_cfg = env
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("content")
    link = tmp_path / "link"
    link.symlink_to(data)
    cid = run(d, pod, pod_cfg, container_config("ro", ["sleep", "600"], mounts=[
        api_pb2.Mount(container_path="/data", host_path=str(link), readonly=True)]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert exec_sync(d, cid, ["cat", "/data/file"]).stdout == b"content"
    r = exec_sync(d, cid, ["touch", "/data/new"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    assert not Path(data / "new").exists()
