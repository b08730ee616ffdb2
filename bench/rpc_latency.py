#!/usr/bin/env python3
"""Version and Status round trips over the CRI socket: p50/p99 over N calls.

    bench/rpc_latency.py [--endpoint unix:///run/pycri/pycri.sock] [-n 2000]

Without --endpoint it starts a pycri daemon in a temporary root. Each --compare [LABEL=]ENDPOINT (repeatable:
the kit's containerd, a CRI-O socket) is measured too, with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(endpoint: str, n: int) -> dict[str, tuple[float, float]]:
    channel = grpc.insecure_channel(endpoint)
    stub = api_pb2_grpc.RuntimeServiceStub(channel)
    out = {}
    for name, call, req in (("Version", stub.Version, api_pb2.VersionRequest()),
                            ("Status", stub.Status, api_pb2.StatusRequest())):
        for _ in range(100):  # warm up the channel and the server's code paths
            call(req)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            call(req)
            samples.append((time.perf_counter() - t) * 1000)
        out[name] = (statistics.median(samples), percentile(samples, 99))
    channel.close()
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    add_compare_argument(ap)
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    daemon = None
    endpoint = args.endpoint
    if endpoint is None:
        from conformance.daemon import Daemon

        daemon = Daemon({"log_level": "info"}).start()
        endpoint = f"unix://{daemon.socket}"
    try:
        ours = measure(endpoint, args.n)
        for name, (p50, p99) in ours.items():
            print(f"pycri      {name:8s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({args.n} calls)")
        if daemon is not None:
            print(f"pycri      idle RSS after the run: {rss_mb(daemon.proc.pid):.1f} MB")
        for label, other in parse_compare(args.compare):
            theirs = measure(other, args.n)
            for name, (p50, p99) in theirs.items():
                print(f"{label:10s} {name:8s} p50 {p50:.3f} ms  p99 {p99:.3f} ms")
                print(f"ratio      {name:8s} p50 pycri/{label} = {ours[name][0] / p50:.2f}")
    finally:
        if daemon is not None:
            daemon.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
