"""Failing CNI setups through the real daemon: clear errors, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_sandboxes import PrivateNetwork, mounts_below, pod_config, remove_all_pods, veths_on
from tests.integration.test_sandbox_lifecycle import run, status, stop, remove

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(daemon_factory, tmp_path):
    """Returns start(conflist_plugins_or_None, **network settings) -> (daemon, network); all cleaned up."""
    made = []

    def start(extra_plugins=None, files=None, **network_settings):
        net = PrivateNetwork(tmp_path / f"n{len(made)}")
        made.append((net, None))
        if extra_plugins is not None:
            net.conflist["plugins"] += extra_plugins
            net.install()
        for name, text in (files or {}).items():
            (net.conf_dir / name).write_text(text)
        d = daemon_factory({"network": {"cni_conf_dir": str(net.conf_dir), **network_settings}})
        made[-1] = (net, d)
        return d, net

    yield start
    for net, d in made:
        try:
            if d is not None:
                remove_all_pods(d)
        finally:
            net.cleanup()


def fake_plugin(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return directory


def assert_nothing_left(d, net):
    assert d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items == []
    assert net.leases() == [] and veths_on(net.bridge) == []
    assert not mounts_below(d.state_dir)
    assert list((d.state_dir / "sandboxes").iterdir()) == []


def test_missing_plugin_is_a_clear_error_and_the_bridge_add_is_undone(setup):
    d, net = setup([{"type": "no-such-plugin"}])
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("missing"))
    assert "no-such-plugin" in err.value.details() and "CNI ADD" in err.value.details()
    assert_nothing_left(d, net)


def test_plugin_error_code_and_message_reach_the_caller(setup, tmp_path):
    plugins = fake_plugin(tmp_path / "plugins", "failing",
                          'cat >/dev/null\necho \'{"cniVersion":"1.0.0","code":11,"msg":"no more leases",'
                          '"details":"pool exhausted"}\'\nexit 1\n')
    d, net = setup([{"type": "failing"}], cni_plugin_dirs=[str(plugins), "/usr/lib/cni"])
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("failing"))
    details = err.value.details()
    assert "code 11" in details
    assert "no more leases" in details
    assert "pool exhausted" in details
    assert_nothing_left(d, net)


def test_bad_ipam_config_reports_the_plugin_message(setup):
    d, net = setup([])
    net.conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    net.install()
    d.restart()
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("badipam"))
    assert "host-local" in err.value.details() or "not-a-subnet" in err.value.details()
    assert_nothing_left(d, net)


def test_a_hung_plugin_is_killed_at_the_timeout(setup, tmp_path):
    plugins = fake_plugin(tmp_path / "plugins", "hang", 'if [ "$CNI_COMMAND" = ADD ]; then exec sleep 60; fi\n')
    d, net = setup([{"type": "hang"}], cni_plugin_dirs=[str(plugins), "/usr/lib/cni"], cni_timeout=1)
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("hung"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out" in err.value.details()
    assert_nothing_left(d, net)


def test_invalid_files_are_skipped_and_a_lone_invalid_one_means_not_ready(setup):
    d, net = setup(None, files={"00-broken.conflist": "{not json", "05-noplugins.conflist":
                                json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": []})})
    with pytest.raises(grpc.RpcError) as err:
        run(d, pod_config("notready"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    net.install("10-good.conflist")
    d.restart()  # read at start, independent of the watcher's timing
    pod_id = run(d, pod_config("afterfix"))
    assert status(d, pod_id).status.network.ip
    stop(d, pod_id)
    remove(d, pod_id)
    assert_nothing_left(d, net)
