"""Sandboxes across daemon crashes and restarts: dead infra processes, orphans swept at start, a simulated reboot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from conformance.client import container_config
from conformance.daemon import _kill_processes_mentioning
from hostos import cgroups
from hostos.cgroups.driver import driver
from tests.imagebuild import build_busybox_image
from tests.integration.helpers_sandboxes import (PrivateNetwork, cgroup_exists, installed_network,
                                                 iptables_rules_mentioning, mounts_below, pod_config, process_gone,
                                                 remove_all_pods, veths_on, wait_until)
from tests.integration.test_sandbox_lifecycle import info, remove, run, status, stop
from tests.integration.test_sandbox_modes import linux

pytestmark = pytest.mark.integration


@pytest.fixture
def network(tmp_path):
    """The private network without portmap (the shared `pods` fixture runs its daemon on this one)."""
    with installed_network(tmp_path, with_portmap=False) as net:
        yield net


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def _record_path(d, pod_id: str) -> Path:
    return d.root / "sandboxes" / f"{pod_id}.json"


def _stop_remove_and_check_clean(d, network, pod_id: str, details: dict) -> None:
    stop(d, pod_id)
    stop(d, pod_id)  # idempotent
    remove(d, pod_id)
    assert network.leases() == [] and veths_on(network.bridge) == []
    assert not mounts_below(d.state_dir)
    assert cgroup_exists(details["cgroupPath"]) == []
    assert not Path(details["sandboxDir"]).exists()


def test_an_infra_left_a_zombie_under_pid_1_by_a_crash_is_gone_not_running(pods):
    """The daemon dies, then the infra's parent: the infra is killed with it and, re-parented to a PID 1
    that never reaps, stays a zombie. It holds nothing: the pod is NotReady and Stop does not wait for it."""
    d, network = pods
    pod_id = run(d, pod_config("zombie-infra", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    infra = details["pid"]
    d.kill()
    os.kill(_stat(infra)[1], signal.SIGKILL)  # its parent, `unshare`: the infra dies with it (PDEATHSIG)
    wait_until(lambda: process_gone(infra), "the infra is dead")
    d.start()
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    _stop_remove_and_check_clean(d, network, pod_id, details)


def test_stop_after_a_crash_does_not_wait_for_a_process_that_reused_the_infra_parent_pid(pods):
    """After a restart the recorded parent pid may name another process; Stop kills the infra and leaves it be."""
    d, network = pods
    pod_id = run(d, pod_config("reused-pid", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    d.kill()
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        record = json.loads(_record_path(d, pod_id).read_text())
        record["infra_parent_pid"] = stranger.pid  # what pid reuse does while the daemon is down
        _record_path(d, pod_id).write_text(json.dumps(record))
        d.start()
        assert status(d, pod_id).status.state == api_pb2.SANDBOX_READY  # the infra itself still runs
        _stop_remove_and_check_clean(d, network, pod_id, details)
        assert stranger.poll() is None, "Stop killed a process that merely reused the infra parent's pid"
        assert process_gone(details["pid"])
    finally:
        stranger.kill()
        stranger.wait()


# --- orphans: what a crash leaves with no record ------------------------------------------------------------

def _crash_running_a_pod(d, config, point: str) -> str:
    """Restart the daemon armed at `point`, let RunPodSandbox crash it there; return the half-made pod's id."""
    d.stop()
    d.start(env={"PYCRI_FAULT_POINT": point})
    with pytest.raises(grpc.RpcError) as e:
        run(d, config)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert d.proc.wait(timeout=30) == -signal.SIGKILL, f"the daemon did not crash at {point}"
    d.kill()  # closes the channel
    records = list((d.root / "sandboxes").glob("*.json"))
    assert len(records) == 1
    return records[0].stem


def _lose_record(d, pod_id: str) -> None:
    """What a crash can do to a record the host state outlives (or what an admin's rm does)."""
    _record_path(d, pod_id).unlink()


def _cni_cache_entries(d, pod_id: str) -> list[str]:
    cache = d.root / "cni-cache"
    return [p.name for p in cache.iterdir() if pod_id in p.name] if cache.exists() else []


def _sweep_warnings(d, pod_id: str) -> list[str]:
    return [line for line in d.log_path.read_text().splitlines() if " WARNING " in line and pod_id in line]


def test_a_sandbox_directory_without_a_record_is_unmounted_and_removed_at_start(pods):
    d, _ = pods
    config = pod_config("dir-orphan")
    pod_id = _crash_running_a_pod(d, config, "sandbox.run.after_namespaces")
    sandbox_dir = d.state_dir / "sandboxes" / pod_id
    assert len(mounts_below(sandbox_dir)) == 3  # the pinned net, ipc and uts namespaces
    _lose_record(d, pod_id)
    stray = d.state_dir / "sandboxes" / "not-a-sandbox"  # not named like ours: left alone
    stray.mkdir()
    d.start()
    assert not sandbox_dir.exists() and not mounts_below(d.state_dir)
    assert stray.is_dir()
    assert _sweep_warnings(d, pod_id)
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    assert status(d, run(d, config)).status.state == api_pb2.SANDBOX_READY


def test_a_cached_cni_result_without_a_record_is_deleted_through_the_plugins_at_start(daemon_factory, tmp_path):
    """The crash comes after the CNI ADD: the DEL from the cache frees the IP lease, the veth and the hostPort
    rules, though no record names the pod; the pod's shm and namespaces go with its directory."""
    net = PrivateNetwork(tmp_path)  # with portmap
    net.install()
    d = daemon_factory({"network": {"cni_conf_dir": str(net.conf_dir)}})
    try:
        host_port = 30000 + os.getpid() % 20000
        config = pod_config("cni-orphan", port_mappings=[api_pb2.PortMapping(
            protocol=api_pb2.TCP, container_port=80, host_port=host_port)])
        pod_id = _crash_running_a_pod(d, config, "sandbox.run.after_network")
        assert net.leases()
        assert veths_on(net.bridge)
        assert iptables_rules_mentioning(pod_id)
        assert _cni_cache_entries(d, pod_id)
        _lose_record(d, pod_id)
        d.start()
        assert net.leases() == [] and veths_on(net.bridge) == []
        assert iptables_rules_mentioning(pod_id) == []
        assert _cni_cache_entries(d, pod_id) == []
        assert not mounts_below(d.state_dir) and not (d.state_dir / "sandboxes" / pod_id).exists()
        assert status(d, run(d, config)).status.state == api_pb2.SANDBOX_READY  # the hostPort is free again
    finally:
        remove_all_pods(d)
        net.cleanup()


def test_a_pod_cgroup_without_a_record_loses_its_processes_and_goes_but_another_daemons_stays(pods):
    """A ready pod whose record is lost: its infra is killed and its cgroup removed. A pycri-<id> cgroup of an
    id this daemon never made (another daemon's pod on the same host) keeps its process."""
    d, network = pods
    pod_id = run(d, pod_config("cgroup-orphan", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    infra = details["pid"]
    d.kill()
    lay = cgroups.layout()  # where pids are: cgroup v2's one tree, or v1's pids hierarchy
    tree = lay.unified if lay.is_v2 and lay.unified is not None else Path("/sys/fs/cgroup/pids")
    # named as this daemon's driver names its own pods' cgroups (a scope under systemd's)
    name = driver(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")).child("", f"pycri-{os.urandom(32).hex()}")
    foreign = tree / details["cgroupParent"].lstrip("/") / name.lstrip("/")
    foreign.mkdir()
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        (foreign / "cgroup.procs").write_text(str(stranger.pid))
        _lose_record(d, pod_id)
        d.start()
        assert cgroup_exists(details["cgroupPath"]) == []
        assert process_gone(infra)
        assert not mounts_below(d.state_dir) and network.leases() == []
        assert stranger.poll() is None and foreign.is_dir()
        assert any("cgroup" in line for line in _sweep_warnings(d, pod_id))
    finally:
        stranger.kill()
        stranger.wait()
        foreign.rmdir()


# --- a reboot: the state dir, mounts, processes and cgroups are gone; the root, IP leases and CNI cache stay ---

IMAGE = "reboot.test/busybox:1"


@pytest.fixture
def pods_with_image(daemon_factory, network, registry, tmp_path):  # noqa: F811
    """A daemon on the private network that has pulled IMAGE; returns (daemon, network)."""
    registry.push("busybox", "1", build_busybox_image())
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nprefix = "reboot.test"\n'
                    f'location = "{registry.host}"\ninsecure = true\n')
    d = daemon_factory({"storage": {"registries_conf": str(conf)}, "network": {"cni_conf_dir": str(network.conf_dir)}})
    d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=IMAGE)), timeout=60)
    try:
        yield d, network
    finally:
        d.remove_everything()


def _cgroup_dirs(cgroup_path: str) -> list[Path]:
    return [m / cgroup_path.lstrip("/") for m in Path("/sys/fs/cgroup").iterdir()
            if (m / cgroup_path.lstrip("/")).is_dir()]


def _simulate_reboot(d, cgroup_paths: list[str]) -> None:
    """What a reboot does to a stopped daemon's host state, short of rebooting: every process of the pod and its
    containers dies, every mount goes, the state dir (a tmpfs like /run) is emptied and the cgroups vanish."""
    for path in cgroup_paths:
        for directory in _cgroup_dirs(path):
            for pid in (directory / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    _kill_processes_mentioning(d.base)  # conmon
    for path in cgroup_paths:
        wait_until(lambda: all(not (c / "cgroup.procs").read_text().strip()
                               for c in _cgroup_dirs(path)),  # noqa: B023  (waited for in this iteration)
                   f"the processes of {path} are gone")
    for target in mounts_below(d.base)[::-1]:  # /proc/self/mounts lists a mount before what is stacked on it
        subprocess.run(["umount", "-l", target], check=True)
    shutil.rmtree(d.state_dir)
    for path in cgroup_paths:
        for directory in sorted(_cgroup_dirs(path), key=lambda p: len(str(p)), reverse=True):
            for child in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(str(p))):
                child.rmdir()
            directory.rmdir()


def test_after_a_simulated_reboot_the_pod_is_notready_and_stop_releases_its_ip_lease(pods_with_image):
    d, network = pods_with_image
    config = pod_config("rebooted", linux=linux(pid=api_pb2.POD))
    pod_id = run(d, config)
    details = info(d, pod_id)
    ctr = d.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config, config=container_config("sleeper", IMAGE, ["sleep", "3600"])),
        timeout=60).container_id
    d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=ctr), timeout=60)
    ctr_info = json.loads(d.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=ctr, verbose=True), timeout=30).info["info"])
    assert network.leases()
    d.kill()
    conmon_cgroup = ctr_info["cgroupsPath"].replace("/pycri-", "/pycri-conmon-")
    _simulate_reboot(d, [details["cgroupPath"], ctr_info["cgroupsPath"], conmon_cgroup])
    assert network.leases() and _cni_cache_entries(d, pod_id)  # on disk, they outlive the reboot
    d.start()

    assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    stop(d, pod_id)
    assert network.leases() == [] and _cni_cache_entries(d, pod_id) == []
    state = d.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr), timeout=30).status.state
    assert state == api_pb2.CONTAINER_EXITED
    remove(d, pod_id)
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert not _record_path(d, pod_id).exists()
    assert not mounts_below(d.base) and veths_on(network.bridge) == []
    for path in (details["cgroupPath"], ctr_info["cgroupsPath"], conmon_cgroup):
        assert _cgroup_dirs(path) == []

    again = run(d, config)  # the name is free again, and the pod network works
    assert status(d, again).status.state == api_pb2.SANDBOX_READY
    assert len(network.leases()) == 1


def test_after_a_simulated_reboot_nothing_recorded_is_trusted_to_still_be_ours(pods):
    """A host-network pod pins nothing, yet it is NotReady after a reboot too. The pids a pod recorded may name
    other processes after a reboot, with start times below the recorded ones (the clock restarted at boot):
    Stop must not kill them."""
    d, network = pods
    host_pod = run(d, pod_config("rebooted-host", linux=linux(network=api_pb2.NODE)))
    infra_pod = run(d, pod_config("rebooted-infra", linux=linux(pid=api_pb2.POD)))
    cgroups = [info(d, p)["cgroupPath"] for p in (host_pod, infra_pod)]
    d.kill()
    _simulate_reboot(d, cgroups)
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        record = json.loads(_record_path(d, infra_pod).read_text())
        record["infra_parent_pid"] = stranger.pid
        record["infra_start_time"] = 10 ** 12  # taken in the previous boot, when the clock had run for longer
        _record_path(d, infra_pod).write_text(json.dumps(record))
        d.start()
        for pod_id in (host_pod, infra_pod):
            assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
            stop(d, pod_id)
            remove(d, pod_id)
        assert stranger.poll() is None, "Stop killed a process that merely has a pid the pod recorded before the reboot"
        assert network.leases() == [] and not mounts_below(d.base)
        assert all(_cgroup_dirs(path) == [] for path in cgroups)
    finally:
        stranger.kill()
        stranger.wait()
