"""Idmapped volumes in pods with their own user namespace: kubelet gives every mount of a `hostUsers: false`
pod the pod's own mappings (Mount.uidMappings/gidMappings), so that host root's files are the pod root's. crun
makes such mounts; runc 1.1 cannot and is refused rather than giving a volume of nobody's files."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, create, exec_sync, run, status, wait_state
from tests.integration.test_userns import MAPPING, run_pod, userns_pod_config

pytestmark = pytest.mark.integration


@pytest.fixture
def volume(tmp_path) -> Path:
    """A host directory owned by host root, as kubelet's volumes are, with a file in it."""
    path = tmp_path / "vol"
    path.mkdir(mode=0o755)
    (path / "f").write_text("from the host\n")
    os.chmod(path / "f", 0o644)
    return path


def idmapped(container_path: str, host_path: Path, **kwargs) -> api_pb2.Mount:
    """A mount as kubelet sends it for a pod with a user namespace: with the pod's mappings."""
    return api_pb2.Mount(container_path=container_path, host_path=str(host_path),
                         **{"uidMappings": MAPPING, "gidMappings": MAPPING, **kwargs})


def own_pid_namespace(mode=api_pb2.CONTAINER) -> api_pb2.LinuxContainerConfig:
    """What kubelet asks for a pod without shareProcessNamespace (the CRI default is the pod's)."""
    return api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
        namespace_options=api_pb2.NamespaceOption(pid=mode)))


def test_an_idmapped_volume_is_the_pod_roots(net_env, volume, tmp_path, request):
    request.getfixturevalue("crun_host")
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg, "crun")
    log_file = tmp_path / "termination-log"
    log_file.touch(mode=0o644)
    mounts = [idmapped("/vol", volume), idmapped("/dev/termination-log", log_file),
              api_pb2.Mount(container_path="/plain", host_path=str(volume))]
    cid = run(d, pod, cfg, container_config("idmap", ["sleep", "600"], mounts=mounts, linux=own_pid_namespace()))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING

    def inside(*cmd: str) -> str:
        result = exec_sync(d, cid, list(cmd))
        assert result.exit_code == 0, result.stderr
        return result.stdout.decode()

    assert inside("stat", "-c", "%u:%g", "/vol", "/vol/f", "/dev/termination-log").split() == ["0:0"] * 3
    assert inside("cat", "/vol/f") == "from the host\n"
    # The container's root writes there as host root's files, which it owns as ever.
    inside("sh", "-c", "echo made > /vol/made && echo done > /dev/termination-log")
    made = os.stat(volume / "made")
    assert (made.st_uid, made.st_gid) == (0, 0)
    assert log_file.read_text() == "done\n"
    # Without mappings the same directory is nobody's in there, and closed to the pod's root.
    assert inside("stat", "-c", "%u:%g", "/plain/f").strip() == "65534:65534"
    assert exec_sync(d, cid, ["touch", "/plain/nope"]).exit_code != 0
    assert not (volume / "nope").exists()
    reported = status(d, cid).status.mounts
    assert [(list(m.uidMappings), list(m.gidMappings)) for m in reported] == [(MAPPING, MAPPING)] * 2 + [([], [])]
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def test_runc_refuses_idmapped_volumes(net_env, volume, tmp_path):
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg, "runc")
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("idmap", ["true"], mounts=[idmapped("/vol", volume)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "/vol" in err.value.details() and "'runc'" in err.value.details(), err.value.details()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


@pytest.mark.parametrize("mount,message", [
    (idmapped("/vol", Path("/tmp"), uidMappings=MAPPING * 2), "exactly one uid mapping, got 2"),
    (api_pb2.Mount(container_path="/vol", host_path="/tmp", uidMappings=MAPPING), "exactly one gid mapping, got 0"),
])
def test_bad_volume_mappings_are_invalid(net_env, tmp_path, request, mount, message):
    request.getfixturevalue("crun_host")
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg, "crun")
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("bad", ["true"], mounts=[mount], linux=own_pid_namespace()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def test_volume_mappings_need_a_pod_user_namespace(net_env, volume):
    d, pod, cfg = net_env
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("idmap", ["true"], mounts=[idmapped("/vol", volume)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/vol" in err.value.details(), err.value.details()
    assert "userns_options mode POD" in err.value.details(), err.value.details()


def test_idmapped_volumes_in_a_shared_pid_namespace_are_refused_on_crun(net_env, volume, tmp_path, request):
    request.getfixturevalue("crun_host")
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg, "crun")
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("idmap", ["true"], mounts=[idmapped("/vol", volume)],
                                             linux=own_pid_namespace(api_pb2.POD)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "/vol" in err.value.details() and "mode POD" in err.value.details(), err.value.details()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
