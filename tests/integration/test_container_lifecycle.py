"""Container lifecycle through the real daemon with runc and conmon: logs, status, events, stop, remove."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2, api_pb2_grpc

from cri.oci.runtime import EXEC_OUTPUT_CAP

from conformance.daemon import TIME_SCALE
from tests.integration.helpers_containers import (EventCollector, container_config, create, exec_sync,
                                                  pod_with_handler, run, start_env, status, wait_log, wait_state)

pytestmark = pytest.mark.integration


def test_lifecycle_logs_status_and_events_in_order(env):
    d, pod, pod_cfg = env
    events = EventCollector(d)
    try:
        cid = create(d, pod, pod_cfg, container_config(
            "lc", ["sh", "-c", "echo hello; printf part; sleep 0.3; echo rest; echo oops >&2; exit 3"],
            labels={"app": "lc"}, annotations={"note": "x"}))
        st = status(d, cid).status
        assert st.state == api_pb2.CONTAINER_CREATED
        assert st.created_at > 0
        assert st.started_at == 0
        assert st.labels["app"] == "lc" and st.annotations["note"] == "x"
        d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
        st = wait_state(d, cid, api_pb2.CONTAINER_EXITED)
        assert st.state == api_pb2.CONTAINER_EXITED
        assert st.exit_code == 3 and st.reason == "Error"
        assert st.created_at <= st.started_at <= st.finished_at
        assert st.image.image.endswith("ctr/busybox:1") and st.image_ref
        assert st.log_path.endswith("lc.log")
        lines = wait_log(pod_cfg, "lc", lambda ls: len(ls) >= 4)
        assert ("stdout", "F", "hello") in lines
        assert ("stdout", "P", "part") in lines and ("stdout", "F", "rest") in lines
        assert ("stderr", "F", "oops") in lines
        listed = d.runtime.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
            label_selector={"app": "lc"}))).containers
        assert [c.id for c in listed] == [cid]
        assert d.runtime.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
            state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)))).containers == []
        d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
        d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)  # idempotent
        with pytest.raises(grpc.RpcError) as err:
            status(d, cid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        deadline = time.monotonic() + 60  # (left as soon as it holds: a loaded host is slow, not wrong)
        while len(events.kinds_for(cid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events.kinds_for(cid) == [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                                         api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
    finally:
        events.close()


def test_a_container_without_a_log_path_runs_and_execs(env):
    d, pod, pod_cfg = env
    config = container_config("nolog", ["sh", "-c", "echo discarded; sleep 600"])
    config.log_path = ""
    cid = run(d, pod, pod_cfg, config)
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    assert status(d, cid).status.log_path == ""
    assert exec_sync(d, cid, ["echo", "ok"]).stdout == b"ok\n"


def test_sigterm_ignoring_process_is_killed_after_the_timeout(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("stubborn", ["sh", "-c", "trap '' TERM; echo ready; while true; do "
                                                                         "sleep 1; done"]))
    wait_log(pod_cfg, "stubborn", lambda ls: ("stdout", "F", "ready") in ls)
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
    st = status(d, cid).status
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 137
    assert st.reason == "Error"
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1), timeout=30)  # idempotent
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id="f" * 64, timeout=1), timeout=30)  # unknown


def test_exec_sync_output_exit_code_and_timeout_kills_the_process(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("ex", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    r = exec_sync(d, cid, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(d, cid, ["sh", "-c", "exec sleep 1234"], timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    left = exec_sync(d, cid, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 1234" not in left
    kubelet_like = grpc.insecure_channel(f"unix://{d.socket}", options=[("grpc.max_receive_message_length", 16 << 20)])
    with kubelet_like:
        big = api_pb2_grpc.RuntimeServiceStub(kubelet_like).ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo start >&2; yes | head -c 20000000"], timeout=60), timeout=90)
    assert big.exit_code == 0
    assert big.stderr == b"start\n"
    assert len(big.stdout) + len(big.stderr) == EXEC_OUTPUT_CAP
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(d, cid, ["true"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_a_container_the_runtime_cannot_create_fails_to_start_and_ends_exited(env, handler, tmp_path, request):
    """The runtime's error (read from its log file in the bundle) reaches the caller and the status."""
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, pod_cfg = pod_with_handler(d, tmp_path, handler, name=f"nocmd-{handler}")
    cid = create(d, pod, pod_cfg, container_config("nocmd", ["/no/such/binary"]))
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/binary" in err.value.details()
    st = status(d, cid).status
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such/binary" in st.message
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []


def test_a_container_exiting_at_once_still_reports_started_before_stopped(env):
    d, pod, pod_cfg = env
    events = EventCollector(d)
    try:
        ids = [run(d, pod, pod_cfg, container_config(f"quick{i}", ["true"])) for i in range(3)]
        for cid in ids:
            st = wait_state(d, cid, api_pb2.CONTAINER_EXITED)
            assert (st.exit_code, st.reason) == (0, "Completed")
            assert 0 < st.started_at <= st.finished_at
        deadline = time.monotonic() + 60  # (left as soon as it holds: a loaded host is slow, not wrong)
        while any(len(events.kinds_for(c)) < 3 for c in ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for cid in ids:
            assert events.kinds_for(cid) == [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                                             api_pb2.CONTAINER_STOPPED_EVENT]
    finally:
        events.close()


def test_background_children_of_an_exited_container_do_not_survive_its_removal(env):
    d, pod, pod_cfg = env
    seconds = str(40000 + os.getpid() % 10000)  # a mark of this run's child: other test runs may share the host
    cid = run(d, pod, pod_cfg, container_config("parent", ["sh", "-c", f"sleep {seconds} & exit 0"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).state == api_pb2.CONTAINER_EXITED
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep\0{seconds}\0".encode()]
    assert survivors == []


FREEZER = "/sys/fs/cgroup/freezer"


@pytest.mark.skipif(not os.path.isdir(FREEZER), reason="needs the cgroup v1 freezer to hold a killed process "
                    "(cgroup v2's freezer lets SIGKILL through)")
def test_removal_fails_while_a_killed_process_of_the_container_still_runs(env):
    """A process SIGKILL cannot end yet (frozen here; on a loaded host, one not yet scheduled to die) keeps
    RemoveContainer from claiming success; once it can die, the removal succeeds and nothing survives."""
    d, pod, pod_cfg = env
    seconds = str(50000 + os.getpid() % 10000)
    cid = run(d, pod, pod_cfg, container_config("frozen", ["sh", "-c", f"sleep {seconds} & "
                                                           "while [ ! -e /go ]; do sleep 0.05; done"]))
    deadline = time.monotonic() + 10
    while not (child := [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep\0{seconds}\0".encode()]):
        assert time.monotonic() < deadline, "the background child did not start"
        time.sleep(0.05)
    ice = f"{FREEZER}/frozen-by-test-{os.getpid()}"  # not pycri*: other runs' leak checks look for those
    os.mkdir(ice)
    try:
        with open(f"{ice}/cgroup.procs", "w") as f:
            f.write(child[0])
        with open(f"{ice}/freezer.state", "w") as f:
            f.write("FROZEN")
        exec_sync(d, cid, ["touch", "/go"])
        assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).state == api_pb2.CONTAINER_EXITED
        with pytest.raises(grpc.RpcError) as err:
            d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=60)
        assert err.value.code() == grpc.StatusCode.INTERNAL and child[0] in err.value.details()
        with open(f"{ice}/freezer.state", "w") as f:
            f.write("THAWED")
        d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=60)
        assert _cmdline(child[0]) != f"sleep\0{seconds}\0".encode()
    finally:
        with open(f"{ice}/freezer.state", "w") as f:
            f.write("THAWED")
        os.kill(int(child[0]), 9) if _cmdline(child[0]) == f"sleep\0{seconds}\0".encode() else None
        deadline = time.monotonic() + 10
        while os.path.isdir(ice) and time.monotonic() < deadline:
            try:
                os.rmdir(ice)
            except OSError:  # EBUSY until the killed child has left it
                time.sleep(0.05)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kubelet_log_text(lines: list[tuple[str, str, str]], stream: str = "stdout") -> str:
    """What kubelet's log reader shows: P records are joined with what follows until an F record ends the line."""
    out = []
    for s, tag, text in lines:
        if s == stream:
            out.append(text if tag == "P" else text + "\n")
    return "".join(out)


def test_partial_lines_are_tagged_as_conmon_and_cri_o_write_them(env):
    """conmon (CRI-O's monitor, ours too) writes what each read of the pipe returned: a read ending without a newline
    is a P record, closed by the next F. containerd buffers to the newline instead ("F xy"); kubelet's reader shows
    both the same. Output left unterminated at exit stays P, as with both peers."""
    d, pod, pod_cfg = env
    gap = 0.3 * TIME_SCALE  # long enough for conmon to have read the "x" alone (emulated in the node VM: 3 s)
    cid = run(d, pod, pod_cfg, container_config("partial", ["sh", "-c", f"printf x; sleep {gap}; echo y; printf end"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).exit_code == 0
    lines = wait_log(pod_cfg, "partial", lambda ls: len(ls) >= 3)
    assert lines == [("stdout", "P", "x"), ("stdout", "F", "y"), ("stdout", "P", "end")]
    assert kubelet_log_text(lines) == "xy\nend"
    crictl = "/var/tmp/critools/bin/crictl"  # kubelet's own log reader (k8s.io/cri-client), where it is built
    if os.access(crictl, os.X_OK):
        shown = subprocess.run([crictl, "--runtime-endpoint", f"unix://{d.socket}", "logs", cid],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and shown.stdout == "xy\nend", shown


@pytest.fixture
def chatty_env(daemon_factory, registry, tmp_path):
    """env, whose runc logs at debug level at every call (as runc 1.1 warns at create under the systemd driver
    about default device rules whose device the node lacks)."""
    wrapper = tmp_path / "runc-debug"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("runc")} --debug "$@"\n')
    wrapper.chmod(0o755)
    handlers = {"runc": {"path": str(wrapper)}, "crun": {"path": "crun"}}
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"handlers": handlers,
                                                                          "default_runtime": "runc"}})


def test_the_runtimes_own_messages_stay_out_of_the_containers_log(chatty_env):
    """The runtime runs `create` with the container's stdio: its own messages go to a log file in the bundle
    (gone with the container), and the container's log holds only what the container wrote."""
    d, pod, pod_cfg = chatty_env
    cid = run(d, pod, pod_cfg, container_config("quiet", ["sh", "-c", "echo to-stdout; echo to-stderr >&2"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).exit_code == 0
    lines = wait_log(pod_cfg, "quiet", lambda ls: len(ls) >= 2)
    assert sorted(lines) == [("stderr", "F", "to-stderr"), ("stdout", "F", "to-stdout")]
    bundle = Path(json.loads(status(d, cid, verbose=True).info["info"])["bundle"])
    assert '"level":"debug"' in (bundle / "runtime.log").read_text()
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    deadline = time.monotonic() + 30  # the bundle is reclaimed in the background after the reply
    while bundle.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not bundle.exists()


def children_of(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, comm) of every process whose parent is pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if int(ppid) == pid:
                found.append((int(entry), state, comm))
    return found


def test_failed_creates_leave_no_zombie_or_monitor_behind(env):
    """conmon reports the runtime's failure and exits; re-parented to the daemon (a subreaper), it must be reaped."""
    d, pod, pod_cfg = env
    before = children_of(d.proc.pid)
    for i in range(3):
        cid = create(d, pod, pod_cfg, container_config(f"fails{i}", ["/no/such/binary"]))
        with pytest.raises(grpc.RpcError):
            d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
    deadline = time.monotonic() + 60  # (left as soon as it holds: a loaded host is slow, not wrong)
    while time.monotonic() < deadline and any(s == "Z" for _, s, _ in children_of(d.proc.pid)):
        time.sleep(0.1)
    after = children_of(d.proc.pid)
    assert [c for c in after if c[1] == "Z"] == []
    assert [c for c in after if c[2] == "conmon"] == [c for c in before if c[2] == "conmon"]


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_exec_sync_whose_command_leaves_a_child_holding_stdout(env, tmp_path, handler, request):
    """The command ends at once but a background child keeps the pipe open: ExecSync returns by its timeout with
    what was read and the command's real exit code, and the child it started is killed."""
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, cfg = pod_with_handler(d, tmp_path, handler, name=f"bg-{handler}")
    cid = run(d, pod, cfg, container_config("bg", ["sleep", "600"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    t0 = time.monotonic()
    r = exec_sync(d, cid, ["sh", "-c", "sleep 4321 & echo started; exit 3"], timeout=3)
    elapsed = time.monotonic() - t0
    assert (r.stdout, r.exit_code) == (b"started\n", 3)
    assert 3 <= elapsed < 60, elapsed  # at its deadline, not when the child ends (4321 s; a loaded host is slow)
    assert "sleep 4321" not in exec_sync(d, cid, ["ps", "-o", "args"]).stdout.decode()
    # Without a timeout the answer comes when the command ends; the child is killed then too.
    t0 = time.monotonic()
    r = exec_sync(d, cid, ["sh", "-c", "sleep 4322 & echo started"], timeout=0)
    assert (r.stdout, r.exit_code) == (b"started\n", 0) and time.monotonic() - t0 < 60
    assert "sleep 4322" not in exec_sync(d, cid, ["ps", "-o", "args"]).stdout.decode()
    # A command that does not end in time is killed, its children holding the output too.
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(d, cid, ["sh", "-c", "sleep 4323 & echo started; sleep 4324"], timeout=2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    left = exec_sync(d, cid, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 4323" not in left and "sleep 4324" not in left
    missing = exec_sync(d, cid, ["/no/such/binary"])  # the runtime cannot start it: its error is the answer
    assert missing.exit_code != 0 and b"/no/such/binary" in missing.stderr
    assert [c for c in children_of(d.proc.pid) if c[1] == "Z"] == []  # crun leaves its failed child to us


def test_stop_signal_is_reported_and_used(env):
    """ContainerStatus reports the signal StopContainer sends (the config's, else the image's, else SIGTERM), and a
    real-time one as the CRI names it (SIGRTMINPLUS1) is sent too."""
    d, pod, pod_cfg = env
    plain = run(d, pod, pod_cfg, container_config("plain", ["sleep", "600"]))
    assert status(d, plain).status.stop_signal == api_pb2.SIGTERM
    for name, sig in (("usr1", api_pb2.SIGUSR1), ("rt", api_pb2.SIGRTMINPLUS1)):
        cid = run(d, pod, pod_cfg, container_config(name, ["sleep", "600"], stop_signal=sig))
        assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
        assert status(d, cid).status.stop_signal == sig
        d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
        st = status(d, cid).status
        number = {api_pb2.SIGUSR1: 10, api_pb2.SIGRTMINPLUS1: 35}[sig]
        assert (st.state, st.exit_code, st.stop_signal) == (api_pb2.CONTAINER_EXITED, 128 + number, sig)


def test_an_exited_containers_root_is_unmounted_before_removal_and_its_files_go_with_it(env):
    d, pod, pod_cfg = env
    cid = run(d, pod, pod_cfg, container_config("unmounted", ["sh", "-c", "echo kept > /written"]))
    assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).exit_code == 0
    merged = f"/containers/{cid}/merged"
    deadline = time.monotonic() + 10
    while any(line.split()[4].endswith(merged) for line in open("/proc/self/mountinfo")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(line.split()[4].endswith(merged) for line in open("/proc/self/mountinfo"))
    stats = d.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.writable_layer.used_bytes.value > 0  # the upper layer is still there
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not any(cid in line for line in open("/proc/self/mountinfo"))
    assert d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
