"""`pycri timeline --svg` of a real pod start, opened in a real browser: Debian's chromium, headless, takes a
screenshot, and the picture shows the chart (not blank, a bar in each phase's colour)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cri.api.v1 import api_pb2
from cri.observe.timeline import COLOURS
from tests.integration.helpers_containers import IMAGE, container_config, run, start_env
from tests.screenshot import screenshot

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def colour_pixels(image: Image.Image, hex_colour: str) -> int:
    wanted = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(1 for pixel in image.get_flattened_data() if all(abs(a - b) <= 6 for a, b in zip(pixel, wanted, strict=False)))


# The node VM's image carries what a node needs, not a browser; the SVG drawn there is the same as on the build host,
# where `make test` installs chromium and this test must run (there a missing chromium fails it).
@pytest.mark.skipif(bool(os.environ.get("NODEVM_OUT")) and shutil.which("chromium") is None,
                    reason="the node VM has no browser (the build host's make test renders the same SVG)")
def test_the_timeline_svg_renders_in_chromium_with_a_bar_per_phase(daemon_factory, registry, tmp_path):
    for d, pod, pod_cfg in start_env(daemon_factory, registry, tmp_path):
        # kubelet pulls for a pod with the pod's config: the pull joins that pod's timeline.
        d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=IMAGE), sandbox_config=pod_cfg),
                           timeout=60)
        cid = run(d, pod, pod_cfg, container_config("app", ["sleep", "30"]))
        d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
        svg = tmp_path / "timeline.svg"
        made = subprocess.run([sys.executable, "-m", "cri", "timeline", pod[:12], "--svg", str(svg), "--config",
                               str(d.config_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        table = subprocess.run([sys.executable, "-m", "cri", "timeline", pod[:12], "--config", str(d.config_path)],
                               cwd=REPO, capture_output=True, text=True, timeout=60).stdout
        phases = {line.split()[1] for line in table.splitlines()[2:] if line.strip()}

        screenshot(svg, tmp_path / "timeline.png")
        image = Image.open(tmp_path / "timeline.png").convert("RGB")
        assert image.size[0] >= 900
        drawn = sum(1 for pixel in image.get_flattened_data() if pixel != (255, 255, 255))
        assert drawn > 2000, f"the screenshot is (nearly) blank: {drawn} pixels drawn"
        assert {"namespaces", "sandbox_files", "pull", "rootfs", "spec", "conmon", "runtime_create", "start"} <= phases, table
        assert f"{IMAGE[-31:]}" in table  # the pull's row names the image
        for phase in phases:
            assert colour_pixels(image, COLOURS[phase]) >= 20, f"no {phase} bar on the screenshot\n{table}"
