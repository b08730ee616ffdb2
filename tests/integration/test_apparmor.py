"""AppArmor profiles through the real daemon and runtime: RuntimeDefault (pycri's own, loaded on first use),
localhost profiles, Unconfined. Runs where AppArmor is on (the node VM); skipped elsewhere, where
test_container_security checks that a named profile is refused and nothing is set."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest
from cri.api.v1 import api_pb2

from cri.oci import apparmor
from tests.integration.helpers_containers import container_config, create, exec_sync, run, status, wait_state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not apparmor.enabled(), reason="AppArmor is not enabled on this host"),
    pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser is not installed"),
]

DENY_WRITE = "pycri-test-deny-write"
PROFILE = f"""#include <tunables/global>
profile {DENY_WRITE} flags=(attach_disconnected) {{
  #include <abstractions/base>
  file,
  deny /** w,
}}
"""


@pytest.fixture
def deny_write_profile():
    subprocess.run(["apparmor_parser", "--replace", "--skip-cache"], input=PROFILE.encode(), check=True,
                   capture_output=True)
    yield f"localhost/{DENY_WRITE}"
    subprocess.run(["apparmor_parser", "--remove"], input=PROFILE.encode(), capture_output=True)


def sleeper(d, pod, pod_cfg, name, **security) -> str:
    cid = run(d, pod, pod_cfg, container_config(name, ["sleep", "600"], linux=api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(**security))))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    return cid


def confinement(d, cid) -> str:
    return exec_sync(d, cid, ["cat", "/proc/self/attr/current"]).stdout.decode().strip("\0\n ")


def reported(d, cid) -> str:
    return json.loads(status(d, cid, verbose=True).info["info"])["apparmorProfile"]


def test_runtime_default_unconfined_and_privileged(env):
    d, pod, pod_cfg = env
    lsm = json.loads(d.runtime.Status(api_pb2.StatusRequest(verbose=True)).info["lsm"])
    assert lsm["apparmor"] == {"enabled": True, "runtimeDefault": apparmor.DEFAULT_PROFILE}
    default = sleeper(d, pod, pod_cfg, "default")  # no profile named: kubelet's default is RuntimeDefault
    assert confinement(d, default) == "pycri-default (enforce)"
    assert reported(d, default) == "pycri-default"
    assert apparmor.DEFAULT_PROFILE in apparmor.loaded()
    asked = sleeper(d, pod, pod_cfg, "asked", apparmor=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.RuntimeDefault))
    assert confinement(d, asked) == "pycri-default (enforce)"
    # The profile denies mounting, even with the capability to.
    mounted = exec_sync(d, sleeper(d, pod, pod_cfg, "admin", capabilities=api_pb2.Capability(
        add_capabilities=["SYS_ADMIN"])), ["mount", "-t", "tmpfs", "t", "/mnt"])
    assert mounted.exit_code != 0
    free = sleeper(d, pod, pod_cfg, "free", apparmor=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Unconfined))
    assert confinement(d, free) == "unconfined" and reported(d, free) == "unconfined"
    privileged = sleeper(d, pod, pod_cfg, "priv", privileged=True)
    assert confinement(d, privileged) == "unconfined"


def test_localhost_profiles_new_and_deprecated_fields(env, deny_write_profile):
    d, pod, pod_cfg = env
    for name, security in (
            ("new", dict(apparmor=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost,
                                                          localhost_ref=DENY_WRITE))),
            ("old", dict(apparmor_profile=deny_write_profile)),
            ("both", dict(apparmor_profile="localhost/absent", apparmor=api_pb2.SecurityProfile(
                profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=deny_write_profile)))):
        cid = sleeper(d, pod, pod_cfg, name, **security)
        assert confinement(d, cid) == f"{DENY_WRITE} (enforce)" and reported(d, cid) == DENY_WRITE
        assert exec_sync(d, cid, ["touch", "/tmp/x"]).exit_code != 0
    with pytest.raises(grpc.RpcError) as err:
        create(d, pod, pod_cfg, container_config("absent", ["true"], linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(apparmor_profile="localhost/pycri-absent"))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'pycri-absent' is not loaded" in err.value.details()
