"""Spec generation: pure inputs to config.json, every field the CRI request can influence."""

from __future__ import annotations

import pytest

from cri.oci import spec as S, spec_inputs as SI, spec_resources as SR
from cri.oci.users import ResolvedUser


def inputs(**kwargs) -> SI.ContainerInputs:
    base = dict(container_id="c1", rootfs="/r", command=["run"], pid_mode="CONTAINER",
                netns_path="/ns/net", ipcns_path="/ns/ipc", utsns_path="/ns/uts")
    base.update(kwargs)
    return SI.ContainerInputs(**base)


def ns_types(spec) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


def mount_at(spec, destination):
    found = [m for m in spec["mounts"] if m["destination"] == destination]
    return found[-1] if found else None


# --- process ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command,args,entrypoint,cmd,expected", [
    ([], [], ["/ep"], ["c1", "c2"], ["/ep", "c1", "c2"]),          # image defaults
    ([], ["a1"], ["/ep"], ["c1"], ["/ep", "a1"]),                  # args replace Cmd
    (["/x"], [], ["/ep"], ["c1"], ["/x"]),                         # command replaces entrypoint and Cmd
    (["/x"], ["a1"], ["/ep"], ["c1"], ["/x", "a1"]),
    ([], [], [], ["c1"], ["c1"]),
    ([], ["a1"], [], [], ["a1"]),
])
def test_process_args_follow_kubernetes(command, args, entrypoint, cmd, expected):
    spec = S.container_spec(inputs(command=command, args=args, image_entrypoint=entrypoint, image_cmd=cmd))
    assert spec["process"]["args"] == expected


def test_no_command_anywhere_is_an_error():
    with pytest.raises(SI.SpecError, match="no command"):
        S.container_spec(inputs(command=[]))


def test_env_image_then_config_with_defaults():
    spec = S.container_spec(inputs(image_env=["A=1", "B=2", "PATH=/img"], envs=[("B", "3"), ("C", "")],
                                   hostname="h", user=ResolvedUser(uid=5, home="/home/u")))
    env = spec["process"]["env"]
    assert env == ["A=1", "B=3", "PATH=/img", "C=", "HOSTNAME=h", "HOME=/home/u"]
    assert S.container_spec(inputs())["process"]["env"][0] == SI.DEFAULT_PATH


def test_cwd_user_tty():
    spec = S.container_spec(inputs(image_working_dir="/img", tty=True,
                                   user=ResolvedUser(uid=1000, gid=1001, additional_gids=(5, 6))))
    p = spec["process"]
    assert p["cwd"] == "/img" and p["terminal"] is True
    assert p["user"] == {"uid": 1000, "gid": 1001, "umask": 0o022, "additionalGids": [5, 6]}
    assert S.container_spec(inputs(working_dir="/w", image_working_dir="/img"))["process"]["cwd"] == "/w"
    with pytest.raises(SI.SpecError, match="not absolute"):
        S.container_spec(inputs(working_dir="rel"))


# --- capabilities -------------------------------------------------------------------------------------------

def caps(**kwargs) -> dict:
    return S.container_spec(inputs(**kwargs))["process"]["capabilities"]


def test_default_capabilities():
    c = caps()
    assert set(c["bounding"]) == set(SI.DEFAULT_CAPABILITIES) == set(c["effective"]) == set(c["permitted"])
    assert c["inheritable"] == [] and c["ambient"] == []


def test_add_drop_and_all():
    assert "CAP_NET_ADMIN" in caps(add_capabilities=["NET_ADMIN"])["bounding"]
    assert "CAP_KILL" not in caps(drop_capabilities=["kill"])["bounding"]
    assert caps(drop_capabilities=["ALL"])["bounding"] == []
    assert caps(drop_capabilities=["ALL"], add_capabilities=["CHOWN"])["bounding"] == ["CAP_CHOWN"]
    all_but = caps(add_capabilities=["ALL"], drop_capabilities=["SYS_ADMIN"])["bounding"]
    assert "CAP_SYS_ADMIN" not in all_but and len(all_but) == len(SI.ALL_CAPABILITIES) - 1
    with pytest.raises(SI.SpecError, match="unknown capability"):
        caps(add_capabilities=["NOPE"])


def test_capabilities_are_clamped_to_what_the_daemon_holds():
    held = frozenset(SI.ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"}
    for kwargs in ({"add_capabilities": ["ALL"]}, {"privileged": True}, {"add_capabilities": ["SYS_RESOURCE"]}):
        c = caps(host_capabilities=held, **kwargs)
        assert all("CAP_SYS_RESOURCE" not in c[k] for k in c), kwargs


def test_non_root_gets_only_ambient_in_effective():
    c = caps(user=ResolvedUser(uid=1000), add_capabilities=["NET_BIND_SERVICE"],
             add_ambient_capabilities=["NET_BIND_SERVICE"])
    assert c["effective"] == c["permitted"] == c["ambient"] == c["inheritable"] == ["CAP_NET_BIND_SERVICE"]
    assert "CAP_CHOWN" in c["bounding"]


# --- privileged, masked paths, seccomp ---------------------------------------------------------------------

def test_unprivileged_defaults():
    spec = S.container_spec(inputs())
    assert spec["linux"]["maskedPaths"] == list(SI.DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(SI.DEFAULT_READONLY_PATHS)
    assert "ro" in mount_at(spec, "/sys")["options"]
    assert spec["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert "seccomp" not in spec["linux"]  # unconfined unless asked


def test_explicit_masked_paths_replace_the_defaults():
    spec = S.container_spec(inputs(masked_paths=["/proc/x"], readonly_paths=["/proc/y"]))
    assert spec["linux"]["maskedPaths"] == ["/proc/x"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/y"]


def test_privileged_clears_masks_allows_devices_and_ignores_seccomp():
    dev = SI.DeviceRequest("/dev/sda", "/dev/sda", "rwm", "b", 8, 0)
    spec = S.container_spec(inputs(privileged=True, seccomp="runtime/default", host_devices=[dev]))
    linux = spec["linux"]
    assert "maskedPaths" not in linux
    assert "readonlyPaths" not in linux
    assert "seccomp" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert linux["devices"][0]["path"] == "/dev/sda"
    assert "ro" not in mount_at(spec, "/sys")["options"]
    assert set(spec["process"]["capabilities"]["bounding"]) == set(SI.ALL_CAPABILITIES)


def test_seccomp_runtime_default_and_localhost():
    spec = S.container_spec(inputs(seccomp="runtime/default", kernel_release="6.1.0"))
    profile = spec["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "keyctl" in profile["syscalls"][0]["names"]
    assert "mount" in profile["syscalls"][0]["names"]
    with_admin = S.container_spec(inputs(seccomp="runtime/default", add_capabilities=["SYS_ADMIN"]))
    assert "mount" not in with_admin["linux"]["seccomp"]["syscalls"][0]["names"]
    local = S.container_spec(inputs(seccomp="localhost", seccomp_localhost_profile={
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "chmod", "action": "SCMP_ACT_ERRNO"}]}))
    assert local["linux"]["seccomp"]["syscalls"] == [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]
    with pytest.raises(SI.SpecError):
        S.container_spec(inputs(seccomp="localhost", seccomp_localhost_profile={"syscalls": []}))


# --- mounts ---------------------------------------------------------------------------------------------------

def test_standard_and_sandbox_mounts():
    spec = S.container_spec(inputs(hosts_path="/sb/hosts", resolv_path="/sb/resolv", hostname_path="/sb/hostname",
                                   shm_path="/sb/shm", readonly_rootfs=True))
    for destination in ("/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert mount_at(spec, destination), destination
    assert mount_at(spec, "/dev/shm")["source"] == "/sb/shm"
    assert mount_at(spec, "/etc/hosts")["source"] == "/sb/hosts"
    assert "ro" in mount_at(spec, "/etc/resolv.conf")["options"]
    assert spec["root"] == {"path": "/r", "readonly": True}


def test_host_ipc_uses_the_host_shm():
    assert mount_at(S.container_spec(inputs(ipc_mode="NODE")), "/dev/shm")["source"] == "/dev/shm"


@pytest.mark.parametrize("propagation,option,root", [
    ("private", "rprivate", None), ("rslave", "rslave", "rslave"), ("rshared", "rshared", "rshared")])
def test_bind_mounts_with_propagation(propagation, option, root):
    m = SI.MountRequest("/data", "/host/data", readonly=True, propagation=propagation)
    spec = S.container_spec(inputs(mounts=[m]))
    assert mount_at(spec, "/data") == {"destination": "/data", "type": "bind", "source": "/host/data",
                                       "options": ["rbind", option, "ro"]}
    assert spec["linux"].get("rootfsPropagation") == root


def test_a_user_mount_at_etc_hosts_replaces_the_sandbox_one():
    spec = S.container_spec(inputs(hosts_path="/sb/hosts", mounts=[SI.MountRequest("/etc/hosts", "/mine")]))
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/etc/hosts"] == ["/mine"]


@pytest.mark.parametrize("mount,message", [
    (SI.MountRequest("rel", "/h"), "not absolute"), (SI.MountRequest("/c", ""), "no host path"),
    (SI.MountRequest("/c", "/h", propagation="weird"), "propagation"),
    (SI.MountRequest("/c", "/h", recursive_read_only=True), "needs readonly"),
    (SI.MountRequest("/c", "/h", readonly=True, propagation="rslave", recursive_read_only=True), "private"),
    (SI.MountRequest("/c", "/h", readonly=True, propagation="rshared", recursive_read_only=True), "private"),
])
def test_bad_mounts(mount, message):
    with pytest.raises(SI.SpecError, match=message):
        S.container_spec(inputs(mounts=[mount]))


def test_recursive_read_only_mount_asks_the_runtime_for_rro():
    spec = S.container_spec(inputs(mounts=[SI.MountRequest("/c", "/h", readonly=True, recursive_read_only=True)]))
    assert mount_at(spec, "/c")["options"] == ["rbind", "rprivate", "ro", "rro"]
    plain = S.container_spec(inputs(mounts=[SI.MountRequest("/c", "/h", readonly=True)]))
    assert "rro" not in mount_at(plain, "/c")["options"]


POD_MAP = (SI.IDMap(0, 200000, 65536),)


def test_a_mount_with_mappings_is_idmapped_in_a_pod_user_namespace():
    volume = SI.MountRequest("/vol", "/h", uid_mappings=POD_MAP, gid_mappings=POD_MAP)
    spec = S.container_spec(inputs(userns_mode="POD", userns_path="/sb/ns/user", uid_mappings=list(POD_MAP),
                                   gid_mappings=list(POD_MAP), mounts=[volume, SI.MountRequest("/plain", "/p")]))
    assert mount_at(spec, "/vol") == {
        "destination": "/vol", "type": "bind", "source": "/h", "options": ["rbind", "rprivate", "rw", "idmap"],
        "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}
    assert "uidMappings" not in mount_at(spec, "/plain")
    assert "idmap" not in mount_at(spec, "/plain")["options"]


@pytest.mark.parametrize("uids,gids,userns,message", [
    (POD_MAP, POD_MAP, "NODE", "no user namespace of its pod"),
    (POD_MAP, (), "POD", "exactly one gid mapping, got 0"),
    (POD_MAP * 2, POD_MAP, "POD", "exactly one uid mapping, got 2"),
    ((SI.IDMap(0, 200000, 0),), POD_MAP, "POD", "uid mapping has length 0"),
    (POD_MAP, (SI.IDMap(0, 4294967000, 65536),), "POD", "leaves the 32-bit id space"),
    ((SI.IDMap(4294967295, 0, 2),), POD_MAP, "POD", "leaves the 32-bit id space"),
])
def test_bad_mount_mappings(uids, gids, userns, message):
    pod = {"uid_mappings": list(POD_MAP), "gid_mappings": list(POD_MAP)} if userns == "POD" else {}
    mount = SI.MountRequest("/vol", "/h", uid_mappings=uids, gid_mappings=gids)
    with pytest.raises(SI.SpecError, match=message) as err:
        S.container_spec(inputs(userns_mode=userns, mounts=[mount], **pod))
    assert "/vol" in str(err.value)


# --- namespaces ------------------------------------------------------------------------------------------------

def test_pod_namespaces_are_joined_by_path():
    ns = ns_types(S.container_spec(inputs(pid_mode="POD", pod_pid=42)))
    assert ns == {"mount": None, "network": "/ns/net", "ipc": "/ns/ipc", "uts": "/ns/uts", "pid": "/proc/42/ns/pid"}


def test_host_namespaces_are_left_out():
    ns = ns_types(S.container_spec(inputs(network_mode="NODE", ipc_mode="NODE", pid_mode="NODE", utsns_path="")))
    assert ns == {"mount": None}


def test_target_and_container_pid_modes():
    assert ns_types(S.container_spec(inputs(pid_mode="TARGET", target_pid=7)))["pid"] == "/proc/7/ns/pid"
    assert ns_types(S.container_spec(inputs(pid_mode="CONTAINER")))["pid"] is None
    with pytest.raises(SI.SpecError, match="TARGET"):
        S.container_spec(inputs(pid_mode="TARGET"))
    with pytest.raises(SI.SpecError, match="infra"):
        S.container_spec(inputs(pid_mode="POD"))


def test_user_namespace_mappings():
    m = [SI.IDMap(0, 100000, 65536)]
    spec = S.container_spec(inputs(userns_mode="POD", uid_mappings=m, gid_mappings=m))
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert "user" in ns_types(spec)
    with pytest.raises(SI.SpecError, match="exactly one"):
        S.container_spec(inputs(userns_mode="POD", uid_mappings=m * 2, gid_mappings=m))
    with pytest.raises(SI.SpecError, match="container id 0"):
        S.container_spec(inputs(userns_mode="POD", uid_mappings=[SI.IDMap(1, 1000, 10)], gid_mappings=m))
    with pytest.raises(SI.SpecError, match="not supported"):
        S.container_spec(inputs(userns_mode="CONTAINER"))


def test_joining_the_pods_user_namespace_keeps_the_mappings():
    m = [SI.IDMap(0, 100000, 65536)]
    spec = S.container_spec(inputs(userns_mode="POD", userns_path="/sb/ns/user", uid_mappings=m, gid_mappings=m))
    assert ns_types(spec)["user"] == "/sb/ns/user"
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]


# --- resources -------------------------------------------------------------------------------------------------

def test_resources():
    r = SI.Resources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, cpuset_cpus="0", cpuset_mems="0",
                    memory_limit=1 << 26, hugepage_limits=(("2MB", 1 << 21),), unified={"memory.high": "1"},
                    pids_limit=100)
    res = S.container_spec(inputs(resources=r, swap_accounting=True))["linux"]["resources"]
    assert res["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}
    assert res["memory"] == {"limit": 1 << 26, "swap": 1 << 26}  # no swap unless asked
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    assert res["pids"] == {"limit": 100} and res["unified"] == {"memory.high": "1"}
    assert S.container_spec(inputs(resources=r))["linux"]["resources"]["memory"] == {"limit": 1 << 26}
    with pytest.raises(SI.SpecError, match="at least"):
        SR.resources_object(SI.Resources(memory_limit=100, memory_swap_limit=50), swap_accounting=True)


@pytest.mark.parametrize("asked,floor,expected", [(-997, None, -997), (-997, 0, 0), (500, 0, 500), (1000, -5, 1000)])
def test_oom_score_adj_is_clamped_to_the_floor(asked, floor, expected):
    spec = S.container_spec(inputs(resources=SI.Resources(oom_score_adj=asked), oom_score_adj_floor=floor))
    assert spec["process"]["oomScoreAdj"] == expected


def test_devices_and_annotations_and_cgroups_path():
    dev = SI.DeviceRequest("/dev/fuse", "/dev/fuse", "rw", "c", 10, 229)
    spec = S.container_spec(inputs(devices=[dev], annotations={"a": "b"}, cgroups_path="/pod/c1"))
    assert spec["linux"]["devices"][0]["path"] == "/dev/fuse"
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"} in spec["linux"]["resources"]["devices"]
    assert spec["annotations"] == {"a": "b"} and spec["linux"]["cgroupsPath"] == "/pod/c1"
    with pytest.raises(SI.SpecError, match="permissions"):
        S.container_spec(inputs(devices=[SI.DeviceRequest("/dev/x", "/dev/x", "rwx", "c", 1, 1)]))


def test_a_private_cgroup_namespace_when_asked():
    assert {"type": "cgroup"} in S.container_spec(inputs(cgroup_namespace=True))["linux"]["namespaces"]
    assert {"type": "cgroup"} not in S.container_spec(inputs())["linux"]["namespaces"]
