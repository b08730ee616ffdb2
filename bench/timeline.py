#!/usr/bin/env python3
"""Where pod start time goes: starts pods as kubelet does (RunPodSandbox, PullImage with the pod's config,
CreateContainer, StartContainer per container) on a private bridge network, then prints `pycri timeline`.

    bench/timeline.py [--pods 2] [--containers 2] [--image IMAGE] [--svg FILE] [--png FILE] [--registries-conf F]

The daemon runs in a temporary root with the critest kit's registries.conf (its registry on 127.0.0.1:5000
must run). --png also screenshots the SVG with headless chromium (how docs/timeline.png was made).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import DEFAULT_IMAGE, KIT_REGISTRIES  # noqa: E402
from bench.sandbox import BenchNetwork, runtime_endpoint  # noqa: E402
from cri.api.v1 import api_pb2  # noqa: E402
from conformance.client import Client  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def start_pod(client: Client, index: int, containers: int, image: str, logs: Path) -> None:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=f"web-{index}", namespace="demo", uid=f"uid-web-{index}"),
        hostname=f"web-{index}", log_directory=str(logs / str(index)), linux=api_pb2.LinuxPodSandboxConfig())
    pod = client.run_pod(config)
    client.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image), sandbox_config=config),
                            timeout=300)
    for n in range(containers):
        container = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name=f"app-{n}"),
                                            image=api_pb2.ImageSpec(image=image, user_specified_image=image),
                                            command=["sleep", "60"], log_path=f"app-{n}.log")
        client.start(client.create(pod, container, config))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=2)
    ap.add_argument("--containers", type=int, default=2)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--svg", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    args = ap.parse_args()
    settings = {"log_level": "info", "storage": {"registries_conf": args.registries_conf}}
    network = BenchNetwork(bridge="pycritl0", subnet="10.125.0.0/16", name="pycri-timeline")
    with runtime_endpoint(None, settings, network) as (endpoint, daemon), tempfile.TemporaryDirectory() as logs:
        client = Client(endpoint)
        try:
            for i in range(args.pods):
                start_pod(client, i, args.containers, args.image, Path(logs))
            pycri = [sys.executable, "-m", "cri", "timeline", "--config", str(daemon.config_path)]
            subprocess.run(pycri, cwd=REPO, check=True)
            svg = args.svg or (Path(logs) / "timeline.svg" if args.png else None)
            if svg:
                subprocess.run([*pycri, "--svg", str(svg)], cwd=REPO, check=True)
            if args.png:
                from tests.screenshot import screenshot  # (Pillow: the test extra)
                screenshot(svg, args.png)
                print(f"wrote {args.png}")
        finally:
            client.remove_everything()
            client.close()
    return 0


if __name__ == "__main__":
    if shutil.which("chromium") is None and "--png" in sys.argv:
        sys.exit("bench/timeline.py: --png needs chromium (apt-get install chromium)")
    sys.exit(main())
