"""The pycri container image that `make image` builds (build/pycri-image.tar): imported into a running
daemon through `pycri image import`, it runs the chart's commands. Skipped when the image was not built
(`make image` takes minutes and is not part of `make test`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cri.api.v1 import api_pb2
from tests.integration.helpers_containers import pod_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO / "build" / "pycri-image.tar"


@pytest.mark.skipif(not ARCHIVE.exists(), reason="build/pycri-image.tar not built (make image)")
def test_the_built_image_imports_live_and_runs_pycri(daemon, tmp_path):
    sys.path.insert(0, str(REPO))
    from image.build import REFERENCE

    imported = subprocess.run([sys.executable, "-m", "cri", "image", "import", str(ARCHIVE), "--config",
                               str(daemon.config_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0 and REFERENCE in imported.stdout, imported.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    config = pod_config(logs, name="image")
    pod = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        # The chart runs `pycri check` and `pycri daemon` by name: the image's PATH must find them.
        cid = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=config, config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="pycri"), image=api_pb2.ImageSpec(image="pycri/pycri:0.1.0"),
                command=["pycri"], args=["version"], log_path="pycri.log")), timeout=60).container_id
        daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
        deadline = time.monotonic() + 60
        while True:
            status = daemon.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), timeout=10).status
            if status.state == api_pb2.CONTAINER_EXITED or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        output = (logs / "pycri.log").read_text()
        assert status.exit_code == 0 and "pycri 0.1.0 (CRI v1)" in output, output
    finally:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
