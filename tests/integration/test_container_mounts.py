"""Bind mounts with propagation (private, rslave, rshared) observed both ways, and volumes from the image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.oci import mounts
from tests.integration.helpers_containers import (container_config, create, exec_sync, pod_with_handler, run,
                                                  start_env, status, wait_state)

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
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shared" in err.value.details()


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


# --- recursive read-only mounts ----------------------------------------------------------------------------

OLD_RUNC = """#!/bin/sh
# runc as it was before 1.1: no `features` command, so nothing says it knows "rro".
case "$1" in
  features) echo 'runc: "features" is not a runc command' >&2; exit 1 ;;
  --version) echo "runc version 1.0.3"; exit 0 ;;
esac
exec runc "$@"
"""


@pytest.fixture
def rro_env(daemon_factory, registry, tmp_path):  # noqa: F811
    """The container env with a third handler, "oldrunc": the real runc behind a wrapper hiding its features."""
    wrapper = tmp_path / "oldrunc"
    wrapper.write_text(OLD_RUNC)
    wrapper.chmod(0o755)
    handlers = {"runc": {"path": "runc"}, "crun": {"path": "crun"}, "oldrunc": {"path": str(wrapper)}}
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"handlers": handlers}})


@pytest.fixture
def host_tree(tmp_path):
    """A host directory with a tmpfs submount at sub/: the part a plain read-only bind leaves writable."""
    top = tmp_path / "tree"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(top / "sub")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-R", "-l", str(top / "sub")], capture_output=True)


def handler_features(d) -> dict[str, api_pb2.RuntimeHandlerFeatures]:
    response = d.runtime.Status(api_pb2.StatusRequest(), timeout=30)
    assert response.features.supplemental_groups_policy
    return {h.name: h.features for h in response.runtime_handlers}


def test_status_lists_each_handler_and_the_default_with_its_features(rro_env):
    d, _, _ = rro_env
    features = handler_features(d)
    assert set(features) == {"", "runc", "crun", "oldrunc"}
    assert features[""] == features[d.default_runtime()]  # the default handler, as kubelet looks it up
    kernel_can = mounts.kernel_at_least(os.uname().release, mounts.MOUNT_SETATTR_KERNEL)
    assert features["runc"].recursive_read_only_mounts is kernel_can   # runc 1.1+ lists "rro"
    assert features["crun"].recursive_read_only_mounts is kernel_can   # crun 1.8+
    assert features["oldrunc"].recursive_read_only_mounts is False
    # user_namespaces: tests/integration/test_userns.py


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_recursive_read_only_reaches_submounts(rro_env, host_tree, handler, tmp_path, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = rro_env
    if not handler_features(d)[handler].recursive_read_only_mounts:
        pytest.skip(f"{handler} cannot do recursive read-only mounts on this host")
    pod, cfg = pod_with_handler(d, tmp_path, handler, name=f"rro-{handler}")
    rro = api_pb2.Mount(container_path="/rro", host_path=str(host_tree), readonly=True, recursive_read_only=True)
    plain = api_pb2.Mount(container_path="/ro", host_path=str(host_tree), readonly=True)
    cid = run(d, pod, cfg, container_config("rro", ["sleep", "600"], mounts=[rro, plain]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert [m.recursive_read_only for m in status(d, cid).status.mounts] == [True, False]
    for path in ("/rro/top", "/rro/sub/x", "/ro/top"):
        r = exec_sync(d, cid, ["touch", path])
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr, path
    # The plain read-only bind leaves the submount writable: what rro is for.
    assert exec_sync(d, cid, ["touch", "/ro/sub/plain"]).exit_code == 0
    assert sorted(p.name for p in (host_tree / "sub").iterdir()) == ["plain"]


def test_recursive_read_only_is_refused_where_it_cannot_be_honoured(rro_env, host_tree, tmp_path):
    d, _, _ = rro_env
    pod, cfg = pod_with_handler(d, tmp_path, "oldrunc", name="rro-oldrunc")
    rro = api_pb2.Mount(container_path="/rro", host_path=str(host_tree), readonly=True, recursive_read_only=True)
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("rro", ["sleep", "600"], mounts=[rro]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/rro" in err.value.details() and "'oldrunc'" in err.value.details()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    # The same runtime still runs the mount without rro.
    plain = api_pb2.Mount(container_path="/ro", host_path=str(host_tree), readonly=True)
    cid = run(d, pod, cfg, container_config("plain", ["sleep", "600"], mounts=[plain]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING


@pytest.mark.parametrize("readonly,propagation,message", [
    (False, api_pb2.PROPAGATION_PRIVATE, "needs readonly"),
    (True, api_pb2.PROPAGATION_HOST_TO_CONTAINER, "needs private propagation"),
    (True, api_pb2.PROPAGATION_BIDIRECTIONAL, "needs private propagation"),
])
def test_recursive_read_only_needs_a_private_read_only_mount(env, host_tree, readonly, propagation, message):
    d, pod, pod_cfg = env
    subprocess.run(["mount", "--make-rshared", str(host_tree / "sub")], check=True)
    mount = api_pb2.Mount(container_path="/rro", host_path=str(host_tree / "sub"), readonly=readonly,
                          propagation=propagation, recursive_read_only=True)
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("bad", ["true"], mounts=[mount]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
