#!/usr/bin/env python3
"""The daemon's memory footprint: idle RSS/PSS and modules imported, then with N running pods.

    bench/memory.py [--runs 3] [--settle 3] [--pods 50] [--image IMAGE] [--registries-conf FILE]

Starts pycri in a temporary root with a minimal configuration (no CNI network, host-network pods),
waits --settle seconds after the socket answers, and reads /proc/<pid>/status (VmRSS, RssAnon, RssFile)
and smaps_rollup (Pss). The module count comes from one extra run with PYTHONPROFILEIMPORTTIME=1 (every
module imported by then, lazily or not). The daemon runs as installed, with a bytecode cache (in a temporary
PYTHONPYCACHEPREFIX, filled by a first discarded run): with PYTHONDONTWRITEBYTECODE set, as in the test
harness, every module is compiled at each start and the idle RSS is about 1.5 MB higher. With --pull it then pulls images into one daemon, printing its RSS after each; with --pods it runs that many pods with one container each
(the image from the critest kit's registry) and prints the daemon's RSS and conmon's PSS per container.
Issue target: idle RSS <= 42 MB (containerd 1.6 idles at 42, CRI-O at 59), < 100 MB with 50 pods.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import DEFAULT_IMAGE, KIT_REGISTRIES, memory_figures  # noqa: E402
from conformance.daemon import Daemon  # noqa: E402


def footprint_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile from status and Pss from smaps_rollup, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            figures[key] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            figures["Pss"] = int(line.split()[1])
    return figures


SETTINGS = {"log_level": "info"}


def idle_run(settle: float, env: dict[str, str]) -> tuple[dict[str, int], Daemon]:
    daemon = Daemon(SETTINGS).start(env=env)
    time.sleep(settle)
    return footprint_kib(daemon.proc.pid), daemon


def modules_imported(settle: float, env: dict[str, str]) -> int:
    _, daemon = idle_run(settle, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        text = daemon.log_path.read_text(errors="replace")
    finally:
        daemon.cleanup()
    return len(set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", text, re.M)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after start-up")
    ap.add_argument("--pods", type=int, default=0, help="running pods for the loaded figures (0: skip)")
    ap.add_argument("--image", default=DEFAULT_IMAGE, help="the pods' image")
    ap.add_argument("--pull", action="append", default=[], metavar="IMAGE",
                    help="pull IMAGE first and print the RSS after it (e.g. bench/pull.py's 127.0.0.1:5000/bench/big:1)")
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for the daemon, to compare settings (repeatable)")
    ap.add_argument("--no-metrics", action="store_true",
                    help="without the metrics endpoint (an installed daemon serves it; the test harness does not)")
    ap.add_argument("--no-bytecode-cache", action="store_true", help="compile every module at start, as the tests do")
    args = ap.parse_args()
    SETTINGS["metrics"] = {"enable": not args.no_metrics, "port": 0}  # port 0: a free one
    with tempfile.TemporaryDirectory(prefix="pycri-pycache") as cache:
        env = {} if args.no_bytecode_cache else {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": cache}
        env.update(item.split("=", 1) for item in args.env)
        if not args.no_bytecode_cache:
            idle_run(0, env)[1].cleanup()
        return measure(args, env)


def measure(args: argparse.Namespace, env: dict[str, str]) -> int:
    samples = []
    for _ in range(args.runs):
        figures, daemon = idle_run(args.settle, env)
        daemon.cleanup()
        samples.append(figures)
    med = {k: statistics.median(s[k] for s in samples) / 1024 for k in samples[0]}
    print(f"idle (median of {args.runs}): RSS {med['VmRSS']:.1f} MB (anon {med['RssAnon']:.1f}, "
          f"file {med['RssFile']:.1f}), PSS {med['Pss']:.1f} MB; "
          f"{modules_imported(args.settle, env)} modules imported")
    if args.pods or args.pull:
        from cri.api.v1 import api_pb2

        daemon = Daemon(SETTINGS)
        try:
            conf = daemon.base / "registries.conf"  # the kit's, and its registry under its own name
            conf.write_text(Path(args.registries_conf).read_text()
                            + '\n[[registry]]\nprefix = "127.0.0.1:5000"\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
            daemon.start(env=env)
            for image in [*args.pull, args.image]:
                daemon.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=600)
                time.sleep(args.settle)
                figures = footprint_kib(daemon.proc.pid)
                print(f"after pulling {image}: RSS {figures['VmRSS'] / 1024:.1f} MB (anon {figures['RssAnon'] / 1024:.1f})")
            if args.pods:
                print(memory_figures(f"unix://{daemon.socket}", daemon.proc.pid, str(daemon.base), args.image,
                                     args.pods))
        finally:
            leaks = daemon.cleanup()
            if leaks:
                print(f"left behind: {leaks}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
