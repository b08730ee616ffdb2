"""Containers across daemon crashes (SIGKILL) and restarts on the same root: what survives, what exited or was
deleted meanwhile, orphans swept at start, conmon's own cgroup, and a CreateContainer whose caller gave up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from hostos.cgroups.driver import driver
from tests.integration.helpers_containers import container_config, create, exec_sync, run, status, wait_state
from tests.integration.helpers_sandboxes import mounts_below, process_gone, wait_until

pytestmark = pytest.mark.integration

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _info(d, cid: str) -> dict:
    return json.loads(status(d, cid, verbose=True).info["info"])


def _record_path(d, cid: str) -> Path:
    return d.root / "containers" / f"{cid}.json"


def _recorded_running(d, cid: str) -> None:
    """Wait until the record on disk says the container runs: the daemon writes it after StartContainer's reply
    without waiting (a crash before that is test_a_start_whose_record_write_a_crash_lost_is_still_running's)."""
    def running() -> bool:
        try:
            return json.loads(_record_path(d, cid).read_text())["state"] == "running"
        except (OSError, ValueError):  # (replaced by rename: never torn, but maybe not there yet)
            return False

    wait_until(running, f"the record of {cid} says it runs", timeout=30)


def _cgroups_naming(cid: str) -> list[str]:
    """Every cgroup directory, in any hierarchy, whose name holds the container id (its own and conmon's)."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        if hierarchy.is_symlink() or not hierarchy.is_dir():
            continue
        for parent, dirs, _ in os.walk(hierarchy):
            found += [os.path.join(parent, name) for name in dirs if cid in name]
    return found


def _our_cgroup(name: str) -> str:
    """How the fixture daemon's cgroup driver names a cgroup of ours (a scope under systemd's, TEST_CGROUP_MANAGER)."""
    return driver(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")).child("", name)


def _process_cgroups(pid: int) -> set[str]:
    """The cgroup paths a process is in, one per hierarchy line of /proc/<pid>/cgroup."""
    return {line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}


def _runtime(d) -> list[str]:
    """The default handler's runtime binary (its handler's name) with the daemon's --root for it."""
    handler = d.default_runtime()
    return [handler, "--root", str(d.state_dir / "runtimes" / handler)]


def _runtime_ids(d) -> list[str]:
    out = subprocess.run([*_runtime(d), "list", "--format", "json"], capture_output=True, check=True)
    return [c["id"] for c in json.loads(out.stdout or b"null") or []]


def _remove_and_check_clean(d, cid: str, conmon_pid: int) -> None:
    """Stop and remove through CRI; nothing of the container may be left on the host once its reclaim is done."""
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        status(d, cid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # the rest is reclaimed in the background, right after the removal
    wait_until(lambda: not (d.state_dir / "containers" / cid).exists(), "the bundle, removed last, is gone")
    assert cid not in _runtime_ids(d)
    assert [m for m in mounts_below(d.base) if cid in m] == []
    assert _cgroups_naming(cid) == []
    assert process_gone(conmon_pid), f"conmon (pid {conmon_pid}) outlived RemoveContainer"


def test_a_running_container_survives_a_daemon_crash_and_is_removed_cleanly(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("survivor", ["sleep", "600"]))
    before = wait_state(d, cid, api_pb2.CONTAINER_RUNNING)
    assert before.state == api_pb2.CONTAINER_RUNNING
    conmon_pid = _info(d, cid)["conmonPid"]
    _recorded_running(d, cid)
    d.kill()
    d.start()
    after = status(d, cid).status
    assert after.state == api_pb2.CONTAINER_RUNNING
    assert after.started_at == before.started_at and after.exit_code == 0
    r = exec_sync(d, cid, ["sh", "-c", "echo alive"])
    assert (r.stdout, r.exit_code) == (b"alive\n", 0)
    _remove_and_check_clean(d, cid, conmon_pid)


def test_a_start_whose_record_write_a_crash_lost_is_still_running(env):
    """The record's writes after CreateContainer's (the runtime's pid, the start) are not waited for: a daemon
    killed right after StartContainer's reply may leave the record saying 'created, no pid yet'. The restart must
    take the container as the runtime and conmon know it, running, not undo it as an interrupted create."""
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("unrecorded", ["sleep", "600"]))
    before = wait_state(d, cid, api_pb2.CONTAINER_RUNNING)
    details = _info(d, cid)
    _recorded_running(d, cid)
    d.kill()
    record = json.loads(_record_path(d, cid).read_text())
    record.update(state="created", pid=0, conmon_pid=0, started_at=0)  # what the lost writes leave
    _record_path(d, cid).write_text(json.dumps(record))
    d.start()
    after = status(d, cid).status
    assert after.state == api_pb2.CONTAINER_RUNNING, after
    assert before.created_at <= after.started_at <= time.time_ns()
    assert _info(d, cid)["pid"] == details["pid"] and _info(d, cid)["conmonPid"] == details["conmonPid"]
    r = exec_sync(d, cid, ["sh", "-c", "echo alive"])
    assert (r.stdout, r.exit_code) == (b"alive\n", 0)
    _remove_and_check_clean(d, cid, details["conmonPid"])


def test_a_container_that_exits_while_the_daemon_is_down_reports_its_real_exit(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config(
        "quitter", ["sh", "-c", "while [ ! -e /go ]; do sleep 0.02; done; exit 7"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    details = _info(d, cid)
    d.kill()
    go = Path(details["rootfs"], "go")
    go.touch()
    told = go.stat().st_mtime_ns  # the kernel's file clock, like the exit file's
    wait_until(lambda: process_gone(details["pid"]), "the container exited")
    wait_until(lambda: process_gone(details["conmonPid"]), "conmon left")
    restarted = time.time_ns()
    d.start()
    st = status(d, cid).status
    assert st.state == api_pb2.CONTAINER_EXITED
    assert (st.exit_code, st.reason) == (7, "Error")
    assert told <= st.finished_at <= restarted
    assert st.started_at <= st.finished_at
    _remove_and_check_clean(d, cid, details["conmonPid"])


def test_a_container_deleted_behind_our_back_is_exited_255_and_says_so(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("victim", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    details = _info(d, cid)
    _recorded_running(d, cid)
    d.kill()
    os.kill(details["conmonPid"], signal.SIGKILL)  # first, or it would report the delete's SIGKILL as exit 137
    wait_until(lambda: process_gone(details["conmonPid"]), "conmon is dead")
    subprocess.run([*_runtime(d), "delete", "-f", cid], check=True, capture_output=True)
    d.start()
    st = status(d, cid).status
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 255 and st.reason == "Error"
    assert "gone" in st.message and "outside pycri" in st.message
    assert st.finished_at >= st.started_at > 0
    _remove_and_check_clean(d, cid, details["conmonPid"])


def test_orphans_a_crash_left_without_a_record_are_removed_at_start(env):
    """A crash right after the runtime create, and a record lost with it: the runtime container, its conmon,
    bundle, rootfs mount and cgroups are ours but unnamed by any record; the next start removes them all."""
    d, pod, pod_cfg = env
    d.kill()
    d.start(env={"PYCRI_FAULT_POINT": "container.create.after_runtime"})
    try:
        create(d, pod, pod_cfg, container_config("orphan", ["sleep", "600"]))
    except grpc.RpcError as e:  # the reply races the crash, which comes right after it
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert d.proc.wait(timeout=30) == -signal.SIGKILL
    [cid] = [p.stem for p in (d.root / "containers").glob("*.json")]
    bundle = d.state_dir / "containers" / cid
    conmon_pid = int((bundle / "conmon-pidfile").read_text())
    assert cid in _runtime_ids(d) and not process_gone(conmon_pid)
    assert [m for m in mounts_below(d.base) if cid in m] and _cgroups_naming(cid)
    (d.root / "containers" / f"{cid}.json").unlink()
    d.start()
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert cid not in _runtime_ids(d)
    assert not bundle.exists()
    assert [m for m in mounts_below(d.base) if cid in m] == []
    assert _cgroups_naming(cid) == []
    assert process_gone(conmon_pid)
    assert not (d.state_dir / "exits" / cid).exists()
    # The name it held is free again.
    cid2 = run(d, pod, pod_cfg, container_config("orphan", ["sleep", "600"]))
    assert wait_state(d, cid2, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING


def test_conmon_runs_in_its_own_cgroup_which_remove_takes_away(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("monitored", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    details = _info(d, cid)
    conmon_cgroups = _process_cgroups(details["conmonPid"])
    assert conmon_cgroups and all(path.endswith(_our_cgroup(f"pycri-conmon-{cid}")) for path in conmon_cgroups)
    assert not _process_cgroups(d.proc.pid) & conmon_cgroups
    assert all(path.endswith(_our_cgroup(f"pycri-{cid}")) for path in _process_cgroups(details["pid"]))
    _remove_and_check_clean(d, cid, details["conmonPid"])


def test_a_create_whose_caller_gave_up_is_handed_to_the_retry(env, tmp_path):
    """The first CreateContainer outlives its deadline (its seccomp profile is a FIFO nobody writes yet); the
    retry, which may come while it still runs, gets its container; a third call is a duplicate."""
    d, pod, pod_cfg = env
    profile = tmp_path / "held-profile.json"
    os.mkfifo(profile)
    config = container_config("impatient", ["sleep", "600"], linux=api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(profile)))))
    request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_cfg)
    gave_up = "rpc=CreateContainer: the caller went away"
    with pytest.raises(grpc.RpcError) as e:
        d.runtime.CreateContainer(request, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client's deadline passes before the daemon's own (counted from the request's arrival) cancels the call:
    # a retry sent at once could come before the daemon knows the first caller is gone, and be a duplicate.
    wait_until(lambda: gave_up in d.log_path.read_text(errors="replace"), "the daemon saw the caller go", timeout=30)
    with ThreadPoolExecutor(1) as pool:
        retry = pool.submit(d.runtime.CreateContainer, request, timeout=60)
        with open(profile, "w") as fifo:  # lets the first call read its profile and finish
            fifo.write(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
        cid = retry.result().container_id
    assert [c.id for c in d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers] == [cid]
    d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    with pytest.raises(grpc.RpcError) as e:  # claimed once: another create is a real duplicate
        d.runtime.CreateContainer(request, timeout=60)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert cid in e.value.details()


def test_a_create_whose_reply_died_with_the_daemon_is_handed_to_the_retry(env):
    """The daemon is killed after CreateContainer made the container; kubelet's retry after the restart gets
    that container, not 'name is reserved'; a different request under the same name does not."""
    d, pod, pod_cfg = env
    config = container_config("unanswered", ["sleep", "600"])
    request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_cfg)
    cid = d.runtime.CreateContainer(request, timeout=60).container_id
    wait_until(lambda: _info(d, cid)["pid"], "the runtime created it")  # CreateContainer replies before that
    d.kill()
    d.start()
    other = api_pb2.CreateContainerRequest()
    other.CopyFrom(request)
    other.config.command[:] = ["sleep", "601"]
    with pytest.raises(grpc.RpcError) as e:
        d.runtime.CreateContainer(other, timeout=60)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert d.runtime.CreateContainer(request, timeout=60).container_id == cid
    d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
