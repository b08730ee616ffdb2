"""Soak: N pod+container lifecycles against a running endpoint; daemon RSS and open fds at the start
and the end, and anything left on the host.

    python -m conformance.soak --endpoint unix:///run/pycri/pycri.sock --pid PID --image IMAGE [-n 1000]

Targets: RSS growth under 10 %, no fd growth, nothing left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from conformance.client import Client, container_config, pod_config
from conformance.hostcheck import leaks, snapshot


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lifecycle(client: Client, image: str, i: int) -> None:
    pod = pod_config(f"soak-{i}")
    pod_id = client.run_pod(pod)
    cid = client.create(pod_id, container_config("c", image, command=["sleep", "60"]), pod)
    client.start(cid)
    client.stop(cid, grace=1)
    client.remove(cid)
    client.stop_pod(pod_id)
    client.remove_pod(pod_id)


def soak(endpoint: str, pid: int, image: str, n: int, warmup: int = 20) -> dict:
    client = Client(endpoint)
    client.pull(image)
    for i in range(warmup):  # let caches, pools and lazy imports settle before the baseline
        lifecycle(client, image, -1 - i)
    before = snapshot(cgroup_marker="pycri")
    rss0, fds0, t0 = rss_kb(pid), open_fds(pid), time.monotonic()
    for i in range(n):
        lifecycle(client, image, i)
    rss1, fds1 = rss_kb(pid), open_fds(pid)
    left = leaks(before, snapshot(cgroup_marker="pycri"))
    client.close()
    return {"lifecycles": n, "seconds": time.monotonic() - t0, "rss_kb": (rss0, rss1), "fds": (fds0, fds1),
            "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0, "left_on_host": left}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="unix:///run/pycri/pycri.sock")
    ap.add_argument("--pid", type=int, required=True, help="the daemon's pid, for RSS and fds")
    ap.add_argument("--image", required=True)
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    r = soak(args.endpoint, args.pid, args.image, args.n)
    print(f"lifecycles        {r['lifecycles']} in {r['seconds']:.0f} s ({r['seconds'] / r['lifecycles'] * 1000:.0f} ms each)")
    print(f"daemon RSS        {r['rss_kb'][0] / 1024:.1f} MB -> {r['rss_kb'][1] / 1024:.1f} MB ({r['rss_growth_pct']:+.1f} %)")
    print(f"daemon open fds   {r['fds'][0]} -> {r['fds'][1]}")
    print(f"left on the host  {r['left_on_host'] or 'nothing'}")
    ok = r["rss_growth_pct"] < 10 and r["fds"][1] <= r["fds"][0] and not r["left_on_host"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
