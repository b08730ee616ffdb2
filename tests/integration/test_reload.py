"""SIGHUP on the real daemon: registries.conf, log level, CNI config and runtime handlers change live; running
pods and containers are not touched; a bad configuration changes nothing; start-only keys are named."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.config import render_toml
from tests.integration.helpers_containers import IMAGE, container_config, exec_sync, pod_config, run, status
from tests.integration.helpers_sandboxes import installed_network
from tests.journal_socket import FakeJournal


def _count(d, text: str) -> int:
    return d.log_path.read_text(errors="replace").count(text)


def sighup(d, timeout: float = 60) -> str:  # generous: the machine may be loaded; ends at once
    """Send SIGHUP and wait for the reload's outcome line; return it."""
    done = ("configuration reloaded", "configuration reload failed")
    before = [_count(d, t) for t in done]
    os.kill(d.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text, n in zip(done, before, strict=False):
            if _count(d, text) > n:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no reload outcome in the log:\n{d.log_tail()}")


def rewrite(d, **changes) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            d.settings.setdefault(key, {}).update(value)
        else:
            d.settings[key] = value
    d.config_path.write_text(render_toml(d.settings))


def pull(d, ref: str):
    return d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)


def test_sighup_rereads_registries_conf_without_touching_running_containers(env, registry, tmp_path):  # noqa: F811
    d, pod, cfg = env
    cid = run(d, pod, cfg, container_config("stays", ["sleep", "3600"]))
    before = status(d, cid, verbose=True)
    second = "second.test/ctr/busybox:1"
    with pytest.raises(grpc.RpcError):
        pull(d, second)

    def pinned() -> bool:
        return d.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=IMAGE))).image.pinned

    assert not pinned()

    conf = tmp_path / "registries.conf"
    conf.write_text(conf.read_text() + f'[[registry]]\nprefix = "second.test"\nlocation = "{registry.host}"\n'
                    f'insecure = true\n')
    rewrite(d, storage={"pinned_images": ["example.test/ctr/*"]})
    assert sighup(d) == "configuration reloaded"
    assert pull(d, second).image_ref
    assert pinned()

    after = status(d, cid, verbose=True)
    assert after.status.state == api_pb2.CONTAINER_RUNNING
    assert after.status.started_at == before.status.started_at
    pid = json.loads(before.info["info"])["pid"]
    assert pid > 0 and json.loads(after.info["info"])["pid"] == pid
    assert exec_sync(d, cid, ["echo", "still here"]).stdout == b"still here\n"
    assert d.proc.poll() is None


def test_sighup_changes_the_log_level(daemon):
    daemon.stop()
    rewrite(daemon, log_level="info")
    daemon.start()
    daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10)
    time.sleep(0.2)
    assert _count(daemon, "rpc=ListPodSandbox") == 0  # a debug line

    rewrite(daemon, log_level="debug")
    assert sighup(daemon) == "configuration reloaded"
    daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10)
    deadline = time.monotonic() + 30  # the loop ends as soon as the line is there
    while _count(daemon, "rpc=ListPodSandbox") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(daemon, "rpc=ListPodSandbox") == 1
    assert "changed: log_level" in daemon.log_tail(200)


def _conditions(d) -> dict[str, bool]:
    return {c.type: c.status for c in d.runtime.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}


def _handlers(d) -> set[str]:
    return {h.name for h in d.runtime.Status(api_pb2.StatusRequest(), timeout=10).runtime_handlers}


def test_sighup_applies_cni_config_and_runtime_handlers(daemon, tmp_path):
    d = daemon
    assert _conditions(d)["NetworkReady"] is False
    assert "extra" not in _handlers(d)
    kept = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config(tmp_path, name="on-runc"),
                                                                runtime_handler="runc"), timeout=60).pod_sandbox_id
    try:
        with installed_network(tmp_path) as network:
            # runc runs a pod: removing it from the configuration is refused, and says so.
            rewrite(d, network={"cni_conf_dir": str(network.conf_dir)},
                    runtime={"default_runtime": "extra", "handlers": {"extra": {"path": "runc"},
                                                                      "crun": {"path": "crun"}}})
            assert sighup(d) == "configuration reloaded"
            assert _conditions(d)["NetworkReady"] is True
            assert {"extra", "runc", "crun"} <= _handlers(d)
            assert "runtime handler 'runc' is removed in the configuration but pods still use it" in d.log_tail(200)

            pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
                config=pod_config(tmp_path, name="on-extra", host_network=False)), timeout=60).pod_sandbox_id
            st = d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10).status
            assert st.state == api_pb2.SANDBOX_READY
            assert st.network.ip.startswith(f"10.123.{network.index}.")
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
            d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    finally:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=kept), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=kept), timeout=60)


def test_a_bad_configuration_changes_nothing_and_start_only_keys_are_named(daemon, tmp_path):
    d = daemon
    good = d.config_path.read_text()
    d.config_path.write_text(good + "\nlog_level = 'loud'\n")
    assert sighup(d) == "configuration reload failed"
    assert "log_level" in d.log_tail(20)
    assert _conditions(d)["RuntimeReady"] is True

    d.config_path.write_text(good)
    rewrite(d, streaming={"idle_timeout": 60.0})
    assert sighup(d) == "configuration reloaded"
    assert "streaming.idle_timeout changed but take effect only at the next start" in d.log_tail(20)
    assert d.proc.poll() is None



def test_under_systemd_the_daemon_logs_structured_entries_to_the_journal(daemon_factory, tmp_path):
    """JOURNAL_STREAM naming the daemon's stderr (as systemd sets it) sends the log to the journal socket."""
    journal = FakeJournal(tmp_path / "journal.sock")
    try:
        base = Path(tempfile.mkdtemp(prefix="pycri-t", dir="/tmp"))
        stderr = base / "daemon.log"  # where the harness sends the daemon's stderr
        stderr.touch()
        st = os.stat(stderr)
        d = daemon_factory({"journal_socket": str(journal.path), "log_level": "info"}, base=base,
                           env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert d.log_path == stderr
        pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config(tmp_path, name="journaled")),
                                      timeout=60).pod_sandbox_id
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        deadline = time.monotonic() + 30  # the fake journal's thread may be slow to run on a loaded machine
        while not journal.find(RPC="RemovePodSandbox") and time.monotonic() < deadline:
            time.sleep(0.05)
        (serving,) = journal.find(MESSAGE="pycri serving CRI v1")
        assert serving["PRIORITY"] == "6" and serving["SYSLOG_IDENTIFIER"] == "pycri"
        (run_call,) = journal.find(RPC="RunPodSandbox")
        assert run_call["CODE"] == "OK"
        assert float(run_call["DURATION_MS"]) > 0
        assert run_call["LOGGER"] == "pycri.rpc"
        assert "pycri serving" not in d.log_path.read_text(errors="replace")  # not twice: stderr stays quiet

        rewrite(d, log_target="stderr")  # SIGHUP moves the log back to stderr
        assert sighup(d) == "configuration reloaded"
        assert "changed: log_target" in d.log_tail(5)
    finally:
        journal.close()
