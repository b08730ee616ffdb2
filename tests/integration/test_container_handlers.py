"""Both runtime handlers (runc and crun) run the same container; containers outlive a daemon restart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cri.api.v1 import api_pb2

from hostos import cgroups
from tests.integration.helpers_containers import (container_config, exec_sync, pod_with_handler, run, status,
                                                  wait_log, wait_state)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_each_handler_runs_execs_and_stops(env, handler, tmp_path, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, cfg = pod_with_handler(d, tmp_path, handler)
    cid = run(d, pod, cfg, container_config("h", ["sh", "-c", "echo up; exec sleep 600"],
                                            linux=api_pb2.LinuxContainerConfig(
                                                resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20))))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    info = json.loads(status(d, cid, verbose=True).info["info"])
    assert info["runtimeHandler"] == handler
    assert exec_sync(d, cid, ["echo", "hi"]).stdout == b"hi\n"
    assert ("stdout", "F", "up") in wait_log(cfg, "h", lambda ls: bool(ls))
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=5), timeout=30)
    st = status(d, cid).status
    assert st.state == api_pb2.CONTAINER_EXITED and st.exit_code == 143  # SIGTERM
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert cgroups.remove(info["cgroupsPath"]) == []  # nothing was left to remove
    assert not Path(info["bundle"]).exists()


def test_containers_outlive_the_daemon_and_exits_while_down_are_seen(env):
    d, pod, pod_cfg = env
    keeps = run(d, pod, pod_cfg, container_config("keeps", ["sleep", "600"]))
    ends = run(d, pod, pod_cfg, container_config("ends", ["sh", "-c", "read x < /dev/stdin; exit 5"], stdin=True))
    for cid in (keeps, ends):
        assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    pid = json.loads(status(d, keeps, verbose=True).info["info"])["pid"]
    d.kill()
    os.kill(pid, 0)  # still running without the daemon
    ends_pid_info = Path(d.state_dir) / "containers" / ends / "pidfile"
    os.kill(int(ends_pid_info.read_text()), 9)
    d.start()
    assert status(d, keeps).status.state == api_pb2.CONTAINER_RUNNING
    st = wait_state(d, ends, api_pb2.CONTAINER_EXITED)
    assert st.state == api_pb2.CONTAINER_EXITED and st.exit_code == 137
    assert exec_sync(d, keeps, ["true"]).exit_code == 0


def test_a_container_whose_monitor_dies_is_killed_and_reported(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("orphan", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    info = json.loads(status(d, cid, verbose=True).info["info"])
    os.kill(info["conmonPid"], 9)
    st = wait_state(d, cid, api_pb2.CONTAINER_EXITED)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 137
    assert "monitor" in st.message
    assert not Path(f"/proc/{info['pid']}").exists() or b"sleep" not in Path(f"/proc/{info['pid']}/cmdline").read_bytes()


def test_the_default_handler_is_reported_as_asked(env, tmp_path):
    """A pod run with the default handler "" reports "" (as containerd and CRI-O do), one named reports its name;
    both survive a daemon restart."""
    d, pod, _ = env  # run with runtime_handler ""
    named, _ = pod_with_handler(d, tmp_path, "runc", name="named-runc")

    def reported() -> dict[str, str]:
        listed = {p.id: p.runtime_handler for p in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items}
        for pod_id in (pod, named):
            st = d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
            assert st.runtime_handler == listed[pod_id]
        return {pod_id: listed[pod_id] for pod_id in (pod, named)}

    assert reported() == {pod: "", named: "runc"}
    d.kill()
    d.start()
    assert reported() == {pod: "", named: "runc"}
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=named), timeout=60)
