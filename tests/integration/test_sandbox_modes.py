"""Sandbox options through the real daemon: sysctls, host namespaces, shared PID, names, filters, restarts."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import EventCollector
from tests.integration.helpers_sandboxes import (PrivateNetwork, cgroup_exists, mounts_below, pod_cgroup_path,
                                                 pod_config, remove_all_pods, veths_on)
from tests.integration.test_sandbox_lifecycle import info, remove, run, status, stop

pytestmark = pytest.mark.integration


def linux(**namespace_modes) -> api_pb2.LinuxPodSandboxConfig:
    return api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(**namespace_modes)))


def test_namespaced_sysctls_are_applied_inside_and_others_rejected(pods):
    d, network = pods
    config = pod_config("sysctl", linux=api_pb2.LinuxPodSandboxConfig(
        sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ping_group_range": "0 2147483647"}))
    pod_id = run(d, config)
    details = info(d, pod_id)
    inside = subprocess.run(["nsenter", f"--net={details['netns']}", f"--ipc={details['ipcns']}", "cat",
                             "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/net/ipv4/ping_group_range"],
                            capture_output=True, text=True)
    assert inside.stdout.split() == ["1", "0", "2147483647"]
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text().strip() == "0"  # the host is untouched

    for name, sysctls, modes in [("unsafe", {"kernel.pid_max": "100000"}, {}),
                                 ("net-on-host", {"net.ipv4.ip_forward": "1"}, {"network": api_pb2.NODE}),
                                 ("ipc-on-host", {"kernel.shm_rmid_forced": "1"}, {"ipc": api_pb2.NODE})]:
        bad = pod_config(name, linux=api_pb2.LinuxPodSandboxConfig(
            sysctls=sysctls, security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(**modes))))
        with pytest.raises(grpc.RpcError) as err:
            run(d, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(sysctls)[0] in err.value.details()
    items = d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
    assert [p.id for p in items] == [pod_id]


def test_a_sysctl_the_kernel_lacks_or_a_refused_value_is_invalid_and_leaves_nothing(pods):
    d, network = pods
    for name, sysctls, wanted in [("no-such", {"net.ipv4.no_such_thing": "1"}, "does not exist"),
                                  ("bad-value", {"net.ipv4.ip_forward": "lots"}, "refuses the value")]:
        with pytest.raises(grpc.RpcError) as err:
            run(d, pod_config(name, linux=api_pb2.LinuxPodSandboxConfig(sysctls=sysctls)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert list(sysctls)[0] in err.value.details() and wanted in err.value.details()
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items == []
    assert not mounts_below(d.state_dir) and network.leases() == []
    assert list((d.state_dir / "sandboxes").iterdir()) == []
    pod_id = run(d, pod_config("no-such"))  # the failed attempt released the name
    stop(d, pod_id)
    remove(d, pod_id)


def test_host_network_and_ipc_mode(pods):
    d, network = pods
    # The pod shares the host's UTS namespace: a hostname of its own cannot be, so it is refused (kubelet sends none).
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("hostnet", hostname="hostnet", linux=linux(network=api_pb2.NODE)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in err.value.details()
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items == []
    pod_id = run(d, pod_config("hostnet", linux=linux(network=api_pb2.NODE, ipc=api_pb2.NODE)))
    st = status(d, pod_id).status
    details = info(d, pod_id)
    assert st.state == api_pb2.SANDBOX_READY
    assert st.linux.namespaces.options.network == api_pb2.NODE
    assert details["netns"] == ""
    assert details["ipcns"] == ""
    assert details["shm"] == "/dev/shm"
    assert details["hostname"] == os.uname().nodename
    assert Path(details["resolvConf"]).read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert Path(details["hosts"]).read_bytes() == Path("/etc/hosts").read_bytes()
    assert veths_on(network.bridge) == [] and network.leases() == []
    stop(d, pod_id)
    remove(d, pod_id)
    assert not mounts_below(d.state_dir)


def test_shared_pid_namespace_has_an_infra_process_in_the_pod_cgroup(pods):
    d, network = pods
    pod_id = run(d, pod_config("sharedpid", linux=linux(pid=api_pb2.POD)))
    details = info(d, pod_id)
    pid = details["pid"]
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(details["netns"]).st_ino
    assert f"{details['cgroupPath']}\n" in Path(f"/proc/{pid}/cgroup").read_text().replace(":", "\n")
    # The infra's output goes to a file of the pod's, never to the daemon's own log.
    infra_log = os.readlink(f"/proc/{pid}/fd/2")
    assert infra_log.endswith(f"/{pod_id}/infra.log"), infra_log
    assert os.readlink(f"/proc/{pid}/fd/1") == infra_log
    stop(d, pod_id)
    assert "unshare:" not in d.log_path.read_text(errors="replace")
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/comm").read_text().strip() != "catatonit"
    remove(d, pod_id)
    assert cgroup_exists(details["cgroupPath"]) == []


def test_name_stays_reserved_until_remove_and_list_filters(pods):
    d, network = pods
    config = pod_config("named", labels={"app": "one", "tier": "web"})
    first = run(d, config)
    with pytest.raises(grpc.RpcError) as err:
        run(d, config)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and first in err.value.details()
    other = run(d, pod_config("other", labels={"app": "two"}))
    stop(d, first)
    with pytest.raises(grpc.RpcError):
        run(d, config)  # still reserved while stopped

    def listed(**filter_fields):
        request = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(**filter_fields))
        return sorted(p.id for p in d.runtime.ListPodSandbox(request, timeout=10).items)

    assert listed() == sorted([first, other])
    assert listed(id=first[:10]) == [first]
    assert listed(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)) == [other]
    assert listed(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)) == [first]
    assert listed(label_selector={"app": "one"}) == [first]
    assert listed(label_selector={"app": "one", "tier": "db"}) == []
    assert status(d, first[:12]).status.id == first  # a unique prefix finds the pod
    remove(d, first)
    again = run(d, config)
    assert again != first
    for pod_id in (again, other):
        stop(d, pod_id)
        remove(d, pod_id)


def test_twenty_concurrent_pods_get_distinct_ips_and_all_clean_up(pods):
    d, network = pods
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda i: run(d, pod_config(f"many-{i}")), range(20)))
        ips = [status(d, pod_id).status.network.ip for pod_id in ids]
        assert len(set(ips)) == 20 and all(ips)
        assert len(network.leases()) == 20 and len(veths_on(network.bridge)) == 20
        list(pool.map(lambda pod_id: stop(d, pod_id), ids))
        list(pool.map(lambda pod_id: remove(d, pod_id), ids))
    assert network.leases() == [] and veths_on(network.bridge) == []
    assert not mounts_below(d.state_dir)


def test_network_is_torn_down_after_a_daemon_restart(pods):
    d, network = pods
    pod_id = run(d, pod_config("restart"))
    details = info(d, pod_id)
    assert len(network.leases()) == 1
    d.restart()
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_READY
    stop(d, pod_id)
    assert network.leases() == [] and veths_on(network.bridge) == []
    remove(d, pod_id)
    assert not Path(details["netns"]).exists()


def test_config_installed_after_start_makes_the_network_ready(daemon_factory, tmp_path):
    network = PrivateNetwork(tmp_path)
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir)}})
    try:
        def network_ready() -> bool:
            conditions = d.runtime.Status(api_pb2.StatusRequest(), timeout=10).status.conditions
            return next(c.status for c in conditions if c.type == "NetworkReady")

        assert not network_ready()
        with pytest.raises(grpc.RpcError) as err:
            run(d, pod_config("early"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        network.install()
        deadline = time.monotonic() + 60
        while not network_ready() and time.monotonic() < deadline:  # the watcher polls every second
            time.sleep(0.02)
        assert network_ready()
        pod_id = run(d, pod_config("late"))
        stop(d, pod_id)
        remove(d, pod_id)
    finally:
        network.cleanup()


def test_pod_cidr_from_update_runtime_config_reaches_host_local(daemon_factory, tmp_path):
    network = PrivateNetwork(tmp_path)
    network.conflist["plugins"][0]["capabilities"] = {"ipRanges": True}
    del network.conflist["plugins"][0]["ipam"]["ranges"]  # host-local adds runtime ranges to static ones
    network.install()
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir)}})
    cidr = f"10.125.{network.index}.0/24"
    try:
        d.runtime.UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(runtime_config=api_pb2.RuntimeConfig(
            network_config=api_pb2.NetworkConfig(pod_cidr=cidr))), timeout=10)
        pod_id = run(d, pod_config("cidr"))
        assert status(d, pod_id).status.network.ip.startswith(f"10.125.{network.index}.")
        stop(d, pod_id)
        remove(d, pod_id)
    finally:
        remove_all_pods(d)
        network.cleanup()


def test_a_sandbox_half_created_when_the_daemon_died_is_undone_at_start(daemon_factory, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    slow = plugins / "slow"
    # The ADD waits for it, so the crash lands mid-ADD (a slow host must not let the ADD end by itself first: its
    # own limit, 5 minutes, only stops a plugin that a broken run left behind).
    release = tmp_path / "release"
    slow.write_text('#!/bin/sh\ncat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then i=0; '
                    f'while [ ! -e {release} ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done; fi\n'
                    'echo \'{"cniVersion":"1.0.0"}\'\n')
    slow.chmod(0o755)
    network = PrivateNetwork(tmp_path)
    network.conflist["plugins"] = [{"type": "slow"}]
    network.install()
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir),
                                    "cni_plugin_dirs": [str(plugins)]}})
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(run, d, pod_config("crashed"))
            records = d.root / "sandboxes"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the record of the sandbox being created is on disk
                if records.exists() and any(records.glob("*.json")):
                    break
                time.sleep(0.005)
            [half_created] = [p.stem for p in records.glob("*.json")]
            while time.monotonic() < deadline:  # and until its cgroup exists, so the restart has it to remove
                if cgroup_exists(pod_cgroup_path(half_created)):
                    break
                time.sleep(0.005)
            assert cgroup_exists(pod_cgroup_path(half_created))
            d.kill()
            with pytest.raises(grpc.RpcError):
                pending.result()
    finally:
        release.touch()
    assert mounts_below(d.state_dir), "the crash should have left pinned namespaces for the restart to undo"
    d.start()
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items == []
    assert not mounts_below(d.state_dir)
    assert list(records.glob("*.json")) == []
    assert cgroup_exists(pod_cgroup_path(half_created)) == []
    pod_id = run(d, pod_config("crashed"))  # the name was never kept
    remove(d, pod_id)


def test_bandwidth_annotations_shape_the_pod_interface(daemon_factory, tmp_path):
    network = PrivateNetwork(tmp_path)
    network.conflist["plugins"].append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    network.install()
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir)}})
    try:
        pod_id = run(d, pod_config("shaped", annotations={"kubernetes.io/ingress-bandwidth": "10M"}))
        [veth] = veths_on(network.bridge)
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", veth.split("@")[0]], capture_output=True, text=True)
        assert "tbf" in qdiscs.stdout and "10Mbit" in qdiscs.stdout, qdiscs.stdout + qdiscs.stderr
        with pytest.raises(grpc.RpcError) as err:
            run(d, pod_config("badly-shaped", annotations={"kubernetes.io/egress-bandwidth": "lots"}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stop(d, pod_id)
        remove(d, pod_id)
    finally:
        remove_all_pods(d)
        network.cleanup()


def test_a_pod_whose_infra_process_died_is_not_ready(pods):
    d, network = pods
    pod_id = run(d, pod_config("infra-dies", linux=linux(pid=api_pb2.POD)))
    os.kill(info(d, pod_id)["pid"], 9)
    deadline = time.monotonic() + 60
    while status(d, pod_id).status.state != api_pb2.SANDBOX_NOTREADY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_NOTREADY
    stop(d, pod_id)
    remove(d, pod_id)
    assert network.leases() == []


def test_infra_started_by_a_previous_daemon_is_stopped_after_a_restart(pods):
    d, network = pods
    pod_id = run(d, pod_config("infra-restart", linux=linux(pid=api_pb2.POD)))
    pid = info(d, pod_id)["pid"]
    d.restart()
    assert status(d, pod_id).status.state == api_pb2.SANDBOX_READY
    stop(d, pod_id)
    remove(d, pod_id)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_sandbox_lifecycle_is_on_the_container_event_stream(pods):
    """Evented PLEG learns of pods from GetContainerEvents: the sandbox's own created, started, stopped and deleted
    events (container id = sandbox id, as containerd sends them), each with the pod's status at that moment."""
    d, _ = pods
    events = EventCollector(d)
    try:
        pod_id = run(d, pod_config("evented"))
        ip = status(d, pod_id).status.network.ip
        stop(d, pod_id)
        stop(d, pod_id)  # already stopped: no second event
        remove(d, pod_id)
        deadline = time.monotonic() + 60  # (left as soon as it holds: a loaded host is slow, not wrong)
        while len(events.kinds_for(pod_id)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert events.kinds_for(pod_id) == [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                                            api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
        mine = [e for e in events.events if e.container_id == pod_id]
        assert all(e.pod_sandbox_status.id == pod_id and e.pod_sandbox_status.metadata.name == "evented"
                   for e in mine)  # even the deleted one: kubelet drops events without it
        assert [e.pod_sandbox_status.state for e in mine] == [api_pb2.SANDBOX_READY] * 2 + [api_pb2.SANDBOX_NOTREADY] * 2
        assert ip and mine[1].pod_sandbox_status.network.ip == ip
        assert all(e.created_at > 0 for e in mine)
    finally:
        events.close()
