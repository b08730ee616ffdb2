"""Security-context fields observed from inside running containers (real runc, conmon and kernel)."""

from __future__ import annotations

import json
import os
import platform

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.oci import host_facts
from cri.oci.spec_inputs import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from tests.integration.helpers_containers import (container_config, create, exec_sync, pod_config, pod_with_handler,
                                                  run, status, wait_log, wait_state)

pytestmark = pytest.mark.integration


def mask(caps) -> int:
    return sum(1 << ALL_CAPABILITIES.index(c) for c in caps)


def proc_status(d, cid) -> dict[str, str]:
    text = exec_sync(d, cid, ["cat", "/proc/self/status"]).stdout.decode()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def sleeper(d, pod, pod_cfg, name, **security) -> str:
    sc = api_pb2.LinuxContainerSecurityContext(**security)
    cid = run(d, pod, pod_cfg, container_config(name, ["sleep", "600"],
                                                linux=api_pb2.LinuxContainerConfig(security_context=sc)))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    return cid


def test_users_groups_and_status_user(env):
    d, pod, pod_cfg = env
    cid = sleeper(d, pod, pod_cfg, "u", run_as_user=api_pb2.Int64Value(value=1000), supplemental_groups=[1234])
    assert exec_sync(d, cid, ["id", "-u"]).stdout == b"1000\n"
    assert sorted(exec_sync(d, cid, ["id", "-G"]).stdout.split()) == sorted([b"1000", b"1234", b"50000"])
    assert exec_sync(d, cid, ["sh", "-c", "echo $HOME"]).stdout == b"/home/u1\n"
    # `id -G` prints the gid first whatever the kernel holds: the process's own group list must have it too.
    assert sorted(int(g) for g in proc_status(d, cid)["Groups"].split()) == [1000, 1234, 50000]
    user = status(d, cid).status.user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1000, 1000, [1000, 1234, 50000])
    named = sleeper(d, pod, pod_cfg, "n", run_as_username="u1", run_as_group=api_pb2.Int64Value(value=4321))
    assert exec_sync(d, named, ["id", "-u"]).stdout == b"1000\n"
    assert exec_sync(d, named, ["id", "-g"]).stdout == b"4321\n"
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("ghost", ["true"], linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(run_as_username="ghost"))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ghost" in err.value.details()


@pytest.mark.parametrize("handler", ["runc", "crun"])
@pytest.mark.parametrize("policy,groups", [
    (api_pb2.SupplementalGroupsPolicy.Merge, [1000, 1234, 50000]),  # 50000: the image's /etc/group names u1
    (api_pb2.SupplementalGroupsPolicy.Strict, [1000, 1234]),
])
def test_supplemental_groups_policy(env, tmp_path, handler, policy, groups, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    assert d.runtime.Status(api_pb2.StatusRequest(), timeout=30).features.supplemental_groups_policy
    pod, pod_cfg = pod_with_handler(d, tmp_path, handler, name=f"groups-{handler}")
    sc = api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=1000), supplemental_groups=[1234],
                                               supplemental_groups_policy=policy)
    cid = run(d, pod, pod_cfg, container_config("groups", ["sh", "-c", "id -G; exec sleep 600"],
                                                linux=api_pb2.LinuxContainerConfig(security_context=sc)))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    first = wait_log(pod_cfg, "groups", lambda lines: bool(lines))
    assert [sorted(int(g) for g in line[2].split()) for line in first] == [groups]  # the container's own process
    # An ExecSync runs as the container's user with its groups, whichever runtime runs it.
    assert exec_sync(d, cid, ["id", "-u"]).stdout == b"1000\n"
    assert sorted(int(g) for g in exec_sync(d, cid, ["id", "-G"]).stdout.split()) == groups
    assert sorted(int(g) for g in proc_status(d, cid)["Groups"].split()) == groups  # the primary gid included
    user = status(d, cid).status.user.linux
    assert (user.uid, user.gid, sorted(user.supplemental_groups)) == (1000, 1000, groups)


def test_capabilities_default_add_drop_all_and_privileged(env):
    d, pod, pod_cfg = env
    held = host_facts.daemon_capabilities()
    default = sleeper(d, pod, pod_cfg, "default")
    assert int(proc_status(d, default)["CapEff"], 16) == mask(DEFAULT_CAPABILITIES)
    added = sleeper(d, pod, pod_cfg, "add", capabilities=api_pb2.Capability(add_capabilities=["NET_ADMIN"],
                                                                              drop_capabilities=["KILL"]))
    eff = int(proc_status(d, added)["CapEff"], 16)
    assert eff == (mask(DEFAULT_CAPABILITIES) | mask(["CAP_NET_ADMIN"])) & ~mask(["CAP_KILL"])
    dropped = sleeper(d, pod, pod_cfg, "drop", capabilities=api_pb2.Capability(drop_capabilities=["ALL"]))
    assert int(proc_status(d, dropped)["CapBnd"], 16) == 0
    everything = sleeper(d, pod, pod_cfg, "all", capabilities=api_pb2.Capability(add_capabilities=["ALL"]))
    assert int(proc_status(d, everything)["CapEff"], 16) == mask(held)  # never more than the daemon holds
    privileged = sleeper(d, pod, pod_cfg, "priv", privileged=True)
    st = proc_status(d, privileged)
    assert int(st["CapEff"], 16) == mask(held) and st["Seccomp"] == "0"
    assert exec_sync(d, privileged, ["sh", "-c", "grep ' /sys ' /proc/mounts"]).stdout.split()[3].startswith(b"rw")
    assert exec_sync(d, privileged, ["sh", "-c", "head -c 10 /proc/timer_list | wc -c"]).stdout == b"10\n"


def test_no_new_privs_readonly_rootfs_masked_and_readonly_paths(env):
    d, pod, pod_cfg = env
    cid = sleeper(d, pod, pod_cfg, "ro", no_new_privs=True, readonly_rootfs=True)
    assert proc_status(d, cid)["NoNewPrivs"] == "1"
    r = exec_sync(d, cid, ["touch", "/x"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    assert exec_sync(d, cid, ["touch", "/dev/shm/ok"]).exit_code == 0
    assert exec_sync(d, cid, ["sh", "-c", "head -c 10 /proc/timer_list | wc -c"]).stdout == b"0\n"  # masked
    r = exec_sync(d, cid, ["sh", "-c", "echo 1 > /proc/sys/kernel/domainname"])
    assert r.exit_code != 0
    plain = sleeper(d, pod, pod_cfg, "rw")
    assert proc_status(d, plain)["NoNewPrivs"] == "0"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the keyctl probe is x86-64 machine code")
def test_seccomp_runtime_default_unconfined_and_localhost(env, tmp_path):
    d, pod, pod_cfg = env
    default = sleeper(d, pod, pod_cfg, "sd", seccomp=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.RuntimeDefault))
    assert proc_status(d, default)["Seccomp"] == "2"
    assert exec_sync(d, default, ["/keyctl-probe"]).exit_code == 1  # keyctl denied by our profile
    unconfined = sleeper(d, pod, pod_cfg, "su")  # no profile at all means unconfined
    assert proc_status(d, unconfined)["Seccomp"] == "0"
    assert exec_sync(d, unconfined, ["/keyctl-probe"]).exit_code == 0
    profile = tmp_path / "block-chmod.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                   "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"],
                                                 "action": "SCMP_ACT_ERRNO"}]}))
    local = sleeper(d, pod, pod_cfg, "sl", seccomp=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(profile)))
    r = exec_sync(d, local, ["chmod", "400", "/tmp"])
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("missing", ["true"], linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(seccomp=api_pb2.SecurityProfile(
                profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "nope.json"))))))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_apparmor_profile_demanded_on_a_host_without_apparmor_is_refused(env):
    if host_facts.apparmor_enabled():
        pytest.skip("this host has AppArmor")
    d, pod, pod_cfg = env
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("aa", ["true"], linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(apparmor=api_pb2.SecurityProfile(
                profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="my-profile")))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppArmor" in err.value.details()
    # RuntimeDefault (what kubelet sends by default) runs, with no profile set; Status says AppArmor is off.
    cid = run(d, pod, pod_cfg, container_config("aa", ["sleep", "600"], linux=api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(apparmor=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.RuntimeDefault)))))
    info = json.loads(status(d, cid, verbose=True).info["info"])
    assert info["apparmorProfile"] == "" and "apparmorProfile" not in info["runtimeSpec"]["process"]
    lsm = json.loads(d.runtime.Status(api_pb2.StatusRequest(verbose=True)).info["lsm"])
    assert lsm["apparmor"] == {"enabled": False, "runtimeDefault": ""}


def test_pod_pid_namespace_in_a_host_pid_pod_is_the_host_s(env, tmp_path):
    """A container asking for its pod's PID namespace in a pod that uses the host's joins the host's, as the pod
    does (there is no infra process to join); one asking for its own gets its own."""
    d, _, _ = env
    cfg = pod_config(tmp_path, name="hostpid")
    cfg.linux.security_context.namespace_options.pid = api_pb2.NODE
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    host_ns = os.readlink("/proc/self/ns/pid")
    for mode, same in ((api_pb2.POD, True), (api_pb2.NODE, True), (api_pb2.CONTAINER, False)):
        sc = api_pb2.LinuxContainerSecurityContext(namespace_options=api_pb2.NamespaceOption(
            network=api_pb2.NODE, pid=mode))
        cid = run(d, pod, cfg, container_config(f"pid{mode}", ["sleep", "600"],
                                                linux=api_pb2.LinuxContainerConfig(security_context=sc)))
        assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
        inside = exec_sync(d, cid, ["ls", "-l", "/proc/self/ns/pid"]).stdout.decode().split("-> ")[-1].strip()
        assert (inside == host_ns) == same, (mode, inside, host_ns)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
