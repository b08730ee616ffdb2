#!/usr/bin/env python3
"""The daemon's memory footprint: idle RSS/PSS and modules imported, then with N running pods.

    bench/memory.py [--runs 3] [--settle 3] [--breakdown] [--pods 50] [--image IMAGE] [--registries-conf FILE]

Starts pycri in a temporary root with a minimal configuration (no CNI network, host-network pods),
waits --settle seconds after the socket answers, and reads /proc/<pid>/status (VmRSS, RssAnon, RssFile)
and smaps_rollup (Pss). The module count comes from one extra run with PYTHONPROFILEIMPORTTIME=1 (every
module imported by then, lazily or not). The daemon runs as installed, with a bytecode cache (in a temporary
PYTHONPYCACHEPREFIX, filled by a first discarded run): with PYTHONDONTWRITEBYTECODE set, as in the test
harness, every module is compiled at each start and the idle RSS is about 1.5 MB higher. With --pull it then pulls images into one daemon, printing its RSS after each; with --pods it runs that many pods with one container each
(the image from the critest kit's registry) and prints the daemon's RSS and conmon's PSS per container.
Targets: idle RSS <= 45 MB, containerd's 42 at best (idle: containerd 42-52 MB, CRI-O 59-72 MB); < 100 MB with
50 pods. docs/benchmarks.md ("Idle footprint cuts") has what is left and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
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


def modules_imported(settle: float, env: dict[str, str]) -> list[str]:
    """Every module the idle daemon has imported, in import order."""
    _, daemon = idle_run(settle, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        text = daemon.log_path.read_text(errors="replace")
    finally:
        daemon.cleanup()
    return list(dict.fromkeys(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", text, re.M)))


# What the idle footprint is made of: the modules are imported stage by stage in a fresh interpreter, the RSS
# read after each. The last two import stages are every other module the idle daemon had imported: the standard
# library's and other distributions' first, then pycri's own; what the idle daemon holds beyond that is its serving
# state.
BREAKDOWN_STAGES = [
    ("asyncio (with ssl, subprocess)", ["asyncio"]),
    ("grpcio (cygrpc, grpc.aio)", ["grpc", "grpc.aio"]),
    ("protobuf and the CRI and health messages", ["google.protobuf", "cri.api.v1.api_pb2", "grpc_health.v1.health"]),
    ("pydantic (and pydantic-core)", ["pydantic", "pydantic.main"]),
]
PYCRI_PACKAGES = {"cri", "storage", "netplugins", "hostos"}
_BREAKDOWN_CHILD = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
stages = json.load(sys.stdin)
print(json.dumps(["interpreter", rss()]), flush=True)
for name, modules in stages:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # a module the daemon imported by path or under a finder only it has
            pass
    print(json.dumps([name, rss()]), flush=True)
"""


def breakdown(idle_rss_kib: float, modules: list[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """(stage, MB it adds) from the interpreter to the idle daemon."""
    ours = [m for m in modules if m.split(".")[0] in PYCRI_PACKAGES]
    others = [m for m in modules if m not in ours and m != "__main__"]
    stages = [*BREAKDOWN_STAGES, ("the other modules the daemon imports (standard library, importlib.metadata ...)", others),
              ("pycri's own modules (building its config models)", ours)]
    out = subprocess.run([sys.executable, "-c", _BREAKDOWN_CHILD], input=json.dumps(stages), capture_output=True,
                         text=True, check=True, env={**os.environ, **env}, cwd=Path(__file__).resolve().parent.parent)
    rows, before = [], 0
    for line in out.stdout.splitlines():
        name, rss = json.loads(line)
        rows.append((name, (rss - before) / 1024))
        before = rss
    rows.append(("serving: threads, gRPC server, loaded state", (idle_rss_kib - before) / 1024))
    return rows


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
    ap.add_argument("--breakdown", action="store_true", help="what the idle RSS is made of, stage by stage")
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
    modules = modules_imported(args.settle, env)
    print(f"idle (median of {args.runs}): RSS {med['VmRSS']:.1f} MB (anon {med['RssAnon']:.1f}, "
          f"file {med['RssFile']:.1f}), PSS {med['Pss']:.1f} MB; {len(modules)} modules imported")
    if args.breakdown:
        for name, mb in breakdown(med["VmRSS"] * 1024, modules, env):
            print(f"  {mb:5.1f} MB  {name}")
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
