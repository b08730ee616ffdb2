"""CDI devices against the real daemon: spec files of our own in a temporary CDI directory describe /dev/null-like
devices; a container asking for them by CDI_devices or by `cdi.k8s.io/` annotation gets their device nodes, env,
mounts and hooks; an unknown device is refused naming it, and nothing is left."""

from __future__ import annotations

import json

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, create, exec_sync, run, start_env, wait_state

pytestmark = pytest.mark.integration


@pytest.fixture
def cdi_env(daemon_factory, registry, tmp_path):  # noqa: F811
    etc, run_dir = tmp_path / "cdi-etc", tmp_path / "cdi-run"
    etc.mkdir()
    run_dir.mkdir()
    (tmp_path / "vendor-data").write_text("from the vendor\n")
    (etc / "example.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "example.test/null",
        "containerEdits": {"env": ["NULL_VENDOR=example"]},
        "devices": [
            {"name": "one", "containerEdits": {"deviceNodes": [{"path": "/dev/xnull", "hostPath": "/dev/null"}],
                                               "env": ["WHICH=one"]}},
            {"name": "two", "containerEdits": {
                "deviceNodes": [{"path": "/dev/xzero", "hostPath": "/dev/zero"},
                                # outside the default device rules: the cgroup lets it be opened to read only
                                {"path": "/dev/xloop", "hostPath": "/dev/loop-control", "permissions": "r"}],
                "mounts": [{"hostPath": str(tmp_path / "vendor-data"), "containerPath": "/opt/vendor/data",
                            "options": ["ro", "nosuid"]}],
                "hooks": [{"hookName": "createRuntime", "path": "/bin/sh",
                           "args": ["sh", "-c", f"echo hooked > {tmp_path / 'hook-ran'}"]}]}}]}))
    (run_dir / "override.yaml").write_text(
        "cdiVersion: 0.6.0\nkind: example.test/null\ndevices:\n"
        "  - name: one\n    containerEdits:\n      deviceNodes: [{path: /dev/xnull, hostPath: /dev/null}]\n"
        "      env: [WHICH=run-one]\n")
    yield from start_env(daemon_factory, registry, tmp_path, {"runtime": {"cdi_spec_dirs": [str(etc), str(run_dir)]}})


def test_cdi_devices_by_field_and_annotation_get_their_edits(cdi_env, tmp_path):
    d, pod, cfg = cdi_env
    config = container_config("cdi", ["sleep", "600"], CDI_devices=[api_pb2.CDIDevice(name="example.test/null=one")],
                               annotations={"cdi.k8s.io/extra": "example.test/null=two"})
    cid = run(d, pod, cfg, config)
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING

    def inside(script: str) -> str:
        result = exec_sync(d, cid, ["sh", "-c", script])
        assert result.exit_code == 0, result.stderr
        return result.stdout.decode()

    assert inside("stat -c %F:%t:%T /dev/xnull /dev/xzero").splitlines() == ["character special file:1:3",
                                                                            "character special file:1:5"]
    assert inside("echo gone > /dev/xnull && head -c 3 /dev/xzero | wc -c").strip() == "3"
    assert inside("dd if=/dev/xloop count=0 2>&1 && echo opened").strip().endswith("opened")
    assert exec_sync(d, cid, ["sh", "-c", ": > /dev/xloop"]).exit_code != 0  # the cgroup allows it r only
    # the later directory's definition of "one" wins; the spec's own edits apply once
    assert inside("echo $WHICH $NULL_VENDOR").split() == ["run-one", "example"]
    assert inside("cat /opt/vendor/data") == "from the vendor\n"
    assert (tmp_path / "hook-ran").read_text() == "hooked\n"


@pytest.mark.parametrize("config_kwargs, message", [
    ({"CDI_devices": [api_pb2.CDIDevice(name="example.test/null=three")]}, "unknown CDI device example.test/null=three"),
    ({"annotations": {"cdi.k8s.io/x": "vendor.test/gpu=0"}}, "unknown CDI device vendor.test/gpu=0"),
    ({"CDI_devices": [api_pb2.CDIDevice(name="not-qualified")]}, "'not-qualified' is not a fully qualified name"),
])
def test_an_unknown_cdi_device_is_refused_naming_it(cdi_env, config_kwargs, message):
    d, pod, cfg = cdi_env
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, cfg, container_config("nodev", ["true"], **config_kwargs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details(), err.value.details()
    assert list(d.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []
