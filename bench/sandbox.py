#!/usr/bin/env python3
"""RunPodSandbox / StopPodSandbox / RemovePodSandbox latency, p50 and p90, sequential and in parallel.

    bench/sandbox.py [--endpoint unix:///run/pycri/pycri.sock] [-n 20] [--parallel 10] [--compare [LABEL=]ENDPOINT ...]

Without --endpoint it starts a pycri daemon in a temporary root, on a private bridge network built like
cri/default-bridge.conflist (ipMasq on; --no-masq matches the critest kit's containerd network, which has
it off). Each --compare runtime (the kit's containerd, a CRI-O socket; bench/compare.py) is measured too, with
the ratios pycri/that runtime.
Reference medians from critest's benchmark on this machine: run 89 ms containerd / 133 ms CRI-O,
stop 82 / 162, remove 21 / 16.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402

STEPS = ("run", "stop", "remove")
REFERENCE = {"run": (89, 133), "stop": (82, 162), "remove": (21, 16)}  # containerd, CRI-O medians (ms)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def lifecycle(stub: api_pb2_grpc.RuntimeServiceStub, name: str, log_root: str) -> dict[str, float]:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name, attempt=0),
        hostname=name, log_directory=f"{log_root}/{name}", linux=api_pb2.LinuxPodSandboxConfig())
    times = {}
    t0 = time.perf_counter()
    pod_id = stub.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
    t1 = time.perf_counter()
    stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    t2 = time.perf_counter()
    stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    t3 = time.perf_counter()
    times["run"], times["stop"], times["remove"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
    return times


def measure(endpoint: str, rounds: int, parallel: int) -> dict[str, dict[str, tuple[float, float]]]:
    channel = grpc.insecure_channel(endpoint)
    stub = api_pb2_grpc.RuntimeServiceStub(channel)
    tag = f"b{os.getpid()}-{int(time.time())}"
    out = {}
    with tempfile.TemporaryDirectory(prefix="pycri-bench-logs") as logs:  # the pods' log dirs go with it
        lifecycle(stub, f"{tag}-warm", logs)
        sequential = [lifecycle(stub, f"{tag}-s{i}", logs) for i in range(rounds)]
        out["sequential"] = {s: (statistics.median(x[s] for x in sequential),
                                 percentile([x[s] for x in sequential], 90)) for s in STEPS}
        with ThreadPoolExecutor(parallel) as pool:
            concurrent = list(pool.map(lambda i: lifecycle(stub, f"{tag}-p{i}", logs), range(rounds * parallel // 2)))
        out[f"{parallel} in parallel"] = {s: (statistics.median(x[s] for x in concurrent),
                                              percentile([x[s] for x in concurrent], 90)) for s in STEPS}
    channel.close()
    return out


@dataclass
class BenchNetwork:
    """A private bridge network built like cri/default-bridge.conflist; benchmarks that may run at the same time
    use their own bridge and subnet."""

    masquerade: bool = True
    bridge: str = "pycribench0"
    subnet: str = "10.124.0.0/16"
    name: str = "pycri-bench"

    def install(self, base: Path) -> Path:
        """Write the conflist below `base`; return the CNI config dir."""
        conf = json.loads((Path(__file__).resolve().parent.parent / "cri" / "default-bridge.conflist").read_text())
        bridge = conf["plugins"][0]
        bridge.update(bridge=self.bridge, ipMasq=self.masquerade)
        bridge["ipam"]["ranges"] = [[{"subnet": self.subnet}]]
        bridge["ipam"]["dataDir"] = str(base / "ipam")
        conf["name"] = self.name
        conf_dir = base / "cni"
        conf_dir.mkdir(parents=True)
        (conf_dir / "10-bench.conflist").write_text(json.dumps(conf))
        return conf_dir


@contextlib.contextmanager
def runtime_endpoint(endpoint: str | None, settings: dict, network: BenchNetwork | None):
    """(endpoint, daemon): the given endpoint and None; without one, a pycri daemon started with `settings` in a
    temporary root, on `network` unless that is None (host network only). The daemon, its bridge and its root are
    removed after."""
    if endpoint is not None:
        yield endpoint, None
        return
    from conformance.daemon import Daemon

    base = Path(tempfile.mkdtemp(prefix="pycri-bench"))
    daemon = None
    try:
        if network is not None:
            settings = {**settings, "network": {"cni_conf_dir": str(network.install(base))}}
        daemon = Daemon(settings).start()
        yield f"unix://{daemon.socket}", daemon
    finally:
        if daemon is not None:
            daemon.cleanup()
        if network is not None:
            subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)])


def print_targets(reference: dict[str, tuple[int, int]], ours: dict[str, tuple[float, float]]) -> None:
    """Our p50 of each step against the better of containerd's and CRI-O's medians on this machine."""
    for step, (containerd, crio) in reference.items():
        best = min(containerd, crio)
        print(f"target     {step:7s} p50 {ours[step][0]:6.1f} ms vs best reference {best} ms "
              f"(containerd {containerd}, CRI-O {crio}): ratio {ours[step][0] / best:.2f}")


def report(label: str, figures: dict[str, dict[str, tuple[float, float]]]) -> None:
    for mode, steps in figures.items():
        line = "  ".join(f"{s} p50 {p50:6.1f} p90 {p90:6.1f}" for s, (p50, p90) in steps.items())
        print(f"{label:10s} {mode:15s} {line}  (ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    add_compare_argument(ap)
    ap.add_argument("-n", type=int, default=20, help="sequential rounds (parallel runs n*parallel/2 lifecycles)")
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--no-masq", action="store_true", help="ipMasq off, like the critest kit's containerd network")
    args = ap.parse_args()
    with runtime_endpoint(args.endpoint, {"log_level": "info"}, BenchNetwork(masquerade=not args.no_masq)) as (
            endpoint, _):
        ours = measure(endpoint, args.n, args.parallel)
        report("pycri", ours)
        print_targets(REFERENCE, ours["sequential"])
        for label, other in parse_compare(args.compare):
            theirs = measure(other, args.n, args.parallel)
            report(label, theirs)
            for mode in ours:
                print(f"ratio      {mode:15s} " + "  ".join(
                    f"{s} {ours[mode][s][0] / theirs[mode][s][0]:.2f}" for s in STEPS) + f"  (p50 pycri/{label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
