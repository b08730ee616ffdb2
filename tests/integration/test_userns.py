"""Pod user namespaces (userns_options mode POD): the pod's namespaces belong to a user namespace with the
requested mappings and its containers join it, on both handlers; bad requests are refused; nothing is left
behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_sandboxes import mounts_below
from tests.integration.helpers_containers import container_config, exec_sync, pod_config, run, status, wait_state

pytestmark = pytest.mark.integration

HOST_BASE = 200000
MAPPING = [api_pb2.IDMapping(container_id=0, host_id=HOST_BASE, length=65536)]


def userns_pod_config(log_dir: Path, uids=MAPPING, gids=MAPPING, mode=api_pb2.POD, **ns) -> api_pb2.PodSandboxConfig:
    cfg = pod_config(log_dir, host_network=False)
    options = cfg.linux.security_context.namespace_options
    options.userns_options.CopyFrom(api_pb2.UserNamespace(mode=mode, uids=uids, gids=gids))
    for key, value in ns.items():
        setattr(options, key, value)
    return cfg


def run_pod(d, cfg, handler: str = "") -> str:
    return d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg, runtime_handler=handler),
                                   timeout=60).pod_sandbox_id


def refused(d, cfg, handler: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        run_pod(d, cfg, handler)
    return err.value


def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of a process as the host sees them."""
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text()
                                           .splitlines())}
    return int(fields["Uid"][0]), int(fields["Gid"][0])


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_a_pod_user_namespace_maps_its_containers_ids(net_env, tmp_path, handler, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    cfg.linux.sysctls.update({"kernel.shmmni": "2048", "net.ipv4.ip_unprivileged_port_start": "80"})
    pod = run_pod(d, cfg, handler)
    pod_status = d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True))
    assert list(pod_status.status.linux.namespaces.options.userns_options.uids) == MAPPING
    userns = json.loads(pod_status.info["info"])["userns"]
    cid = run(d, pod, cfg, container_config("inside", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING

    def inside(*cmd: str) -> str:
        result = exec_sync(d, cid, list(cmd))
        assert result.exit_code == 0, result.stderr
        return result.stdout.decode()

    assert inside("cat", "/proc/self/uid_map").split() == ["0", str(HOST_BASE), "65536"]
    assert inside("cat", "/proc/self/gid_map").split() == ["0", str(HOST_BASE), "65536"]
    assert inside("id", "-u").strip() == "0" and inside("id", "-g").strip() == "0"
    pid = json.loads(status(d, cid, verbose=True).info["info"])["pid"]
    assert host_ids(pid) == (HOST_BASE, HOST_BASE)
    # The container is in the pod's pinned user namespace, and so is the pod's PID namespace (pid 1 is the infra).
    assert os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat(userns).st_ino
    assert "catatonit" in inside("cat", "/proc/1/cmdline")
    # The pod's sysctls were set in namespaces the user namespace owns.
    assert inside("cat", "/proc/sys/kernel/shmmni").strip() == "2048"
    assert inside("cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "80"
    assert inside("hostname").strip() == cfg.hostname
    # The rootfs is idmapped: the image's files (host root's on disk) are the pod root's, which may change them;
    # what the container writes is its root's too.
    assert inside("stat", "-c", "%u:%g", "/bin/busybox", "/").split() == ["0:0", "0:0"]
    assert inside("sh", "-c", "touch /bin/new && stat -c %u /bin/new").strip() == "0"
    assert inside("sh", "-c", "echo x > /dev/shm/f && stat -c %u /dev/shm/f").strip() == "0"

    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    assert not os.path.lexists(userns)


@pytest.mark.parametrize("change,message", [
    ({"uids": MAPPING * 2}, "exactly one uid mapping, got 2"),
    ({"gids": []}, "exactly one gid mapping, got 0"),
    ({"uids": [api_pb2.IDMapping(container_id=1, host_id=HOST_BASE, length=65536)]}, "container id 0"),
    ({"gids": [api_pb2.IDMapping(container_id=0, host_id=HOST_BASE, length=0)]}, "length 0"),
    ({"uids": [api_pb2.IDMapping(container_id=0, host_id=4294967000, length=65536)]}, "32-bit"),
    ({"mode": api_pb2.CONTAINER, "uids": [], "gids": []}, "mode CONTAINER is not supported for a pod"),
    ({"mode": api_pb2.TARGET, "uids": [], "gids": []}, "mode TARGET is not supported for a pod"),
    ({"mode": api_pb2.NODE}, "only valid with user namespace mode POD"),
    ({"network": api_pb2.NODE}, "cannot use the host's network namespace"),
    ({"ipc": api_pb2.NODE}, "cannot use the host's IPC namespace"),
    ({"pid": api_pb2.NODE}, "cannot use the host's PID namespace"),
])
def test_bad_user_namespace_requests_are_invalid_and_leave_nothing(net_env, tmp_path, change, message):
    d, pod, _ = net_env
    err = refused(d, userns_pod_config(tmp_path / "logs", **change))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert message in err.details(), err.details()
    assert [p.id for p in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items] == [pod]


def test_a_failure_after_the_user_namespace_is_made_undoes_it(net_env, tmp_path):
    d, pod, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    cfg.linux.sysctls["kernel.shmmni"] = "not-a-number"  # refused inside the new namespaces, after the pinning began
    err = refused(d, cfg)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "kernel.shmmni" in err.details(), err.details()
    assert [p.id for p in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items] == [pod]
    sandboxes = Path(d.state_dir) / "sandboxes"
    assert sorted(p.name for p in sandboxes.iterdir()) == [pod]  # the daemon_factory leak check covers the mounts


def test_containers_cannot_pick_another_user_namespace_than_their_pods(net_env, tmp_path):
    d, plain_pod, plain_cfg = net_env
    asks_pod = container_config("asks", ["true"], linux=api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(namespace_options=api_pb2.NamespaceOption(
            userns_options=api_pb2.UserNamespace(mode=api_pb2.POD, uids=MAPPING, gids=MAPPING)))))
    with pytest.raises(grpc.RpcError) as err:
        run(d, plain_pod, plain_cfg, asks_pod)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has none" in err.value.details()

    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg)
    other = [api_pb2.IDMapping(container_id=0, host_id=HOST_BASE + 65536, length=65536)]
    uids = asks_pod.linux.security_context.namespace_options.userns_options.uids
    del uids[:]
    uids.extend(other)
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod, cfg, asks_pod)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uid mappings differ" in err.value.details()
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def test_status_advertises_user_namespaces_for_installed_handlers(daemon_factory):
    d = daemon_factory({"runtime": {"handlers": {"runc": {"path": "runc"}, "crun": {"path": "crun"},
                                                 "missing": {"path": "/nonexistent/runtime"}}}})
    handlers = d.runtime.Status(api_pb2.StatusRequest()).runtime_handlers
    # runc 1.1.5 joins the pod's user namespace but cannot idmap kubelet's mounts: not advertised (still usable).
    expected = {"runc": False, "crun": True, "missing": False}
    assert {h.name: h.features.user_namespaces for h in handlers} == {"": expected[d.default_runtime()], **expected}
    err = refused(d, userns_pod_config(Path(d.base) / "logs"), "missing")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "'missing'" in err.details(), err.details()
    # RuntimeFeatures.user_namespaces_host_network (CRI v1.36) tells the truth: such a pod is refused.
    assert d.runtime.Status(api_pb2.StatusRequest()).features.user_namespaces_host_network is False
    err = refused(d, userns_pod_config(Path(d.base) / "logs", network=api_pb2.NODE), "crun")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user namespace cannot use the host's network" in err.details()


def test_an_orphan_rootfs_bound_into_a_user_namespaced_pod_is_released_at_start(net_env, tmp_path):
    """A container whose record was lost leaves its rootfs mounted and bound into the pod's sandbox dir; the next
    start removes both, and the pod itself is untouched."""
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg)
    cid = run(d, pod, cfg, container_config("lost", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert [m for m in mounts_below(d.base) if cid in m and "/rootfs/" in m]  # the bind in the sandbox dir
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.kill()
    (d.root / "containers" / f"{cid}.json").unlink()
    d.start()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert [m for m in mounts_below(d.base) if cid in m] == []
    ready = d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state
    assert ready == api_pb2.SANDBOX_READY
    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
