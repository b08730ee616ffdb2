"""Soak: N pod+container lifecycles against a running endpoint; daemon RSS and open fds at the start
and the end, and anything left on the host.

    python -m conformance.soak --endpoint unix:///run/pycri/pycri.sock --pid PID --image IMAGE [-n 1000]
    python -m conformance.soak --start-daemon [--registries-conf FILE] [-n 1000]

--start-daemon runs pycri in a temporary root on a private bridge network (as bench/lifecycle.py does),
pulling through the critest kit's registries.conf unless told otherwise, and removes it all afterwards.

Targets: RSS growth under 10 %, no fd growth, nothing left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conformance.client import Client, container_config, pod_config
from conformance.hostcheck import leaks, snapshot

DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
KIT_REGISTRIES = Path(__file__).resolve().parent.parent.parent / "shared" / "critest" / "registries.conf"
SOAK_BRIDGE, SOAK_SUBNET = "pycrisoak0", "10.213.0.0/16"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lifecycle(client: Client, image: str, i: int, cgroup_parent: str = "") -> None:
    pod = pod_config(f"soak-{i}", cgroup_parent=cgroup_parent)
    pod_id = client.run_pod(pod)
    cid = client.create(pod_id, container_config("c", image, command=["sleep", "60"]), pod)
    client.start(cid)
    client.stop(cid, grace=1)
    client.remove(cid)
    client.stop_pod(pod_id)
    client.remove_pod(pod_id)


def soak(endpoint: str, pid: int, image: str, n: int, warmup: int = 20, scope: str = "", bridge: str = "") -> dict:
    """`scope` and `bridge` (the daemon's base dir and its CNI bridge) keep other runtimes' state out of the
    leak check; the pods' cgroups live under a parent of their own for the same reason."""
    client = Client(endpoint)
    client.pull(image)
    parent = f"/soakpods-{os.getpid()}"
    for i in range(warmup):  # let caches, pools and lazy imports settle before the baseline
        lifecycle(client, image, -1 - i, parent)
    check = {"cgroup_marker": parent.strip("/") + "/", "scope": scope, "bridge": bridge}
    before = snapshot(**check)
    rss0, fds0, t0 = rss_kb(pid), open_fds(pid), time.monotonic()
    for i in range(n):
        lifecycle(client, image, i, parent)
    rss1, fds1 = rss_kb(pid), open_fds(pid)
    left = leaks(before, snapshot(**check))
    client.close()
    return {"lifecycles": n, "seconds": time.monotonic() - t0, "rss_kb": (rss0, rss1), "fds": (fds0, fds1),
            "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0, "left_on_host": left}


@contextlib.contextmanager
def own_daemon(registries_conf: str):
    """A pycri daemon on a private bridge; yields (endpoint, pid, base dir); all it made is removed after."""
    import json

    from conformance.daemon import Daemon

    base = Path(tempfile.mkdtemp(prefix="pycri-soak"))
    net_dir = base / "net.d"
    net_dir.mkdir()
    (net_dir / "10-soak.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "pycri-soak", "plugins": [
            {"type": "bridge", "bridge": SOAK_BRIDGE, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": SOAK_SUBNET}]], "dataDir": str(base / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    daemon = Daemon({"log_level": "warning", "storage": {"registries_conf": registries_conf},
                     "network": {"cni_conf_dir": str(net_dir)}}, base=base).start()
    try:
        yield f"unix://{daemon.socket}", daemon.proc.pid, str(base)
    finally:
        daemon.cleanup()
        subprocess.run(["ip", "link", "del", SOAK_BRIDGE], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="unix:///run/pycri/pycri.sock")
    ap.add_argument("--pid", type=int, help="the daemon's pid, for RSS and fds")
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--start-daemon", action="store_true", help="run a pycri of our own in a temporary root")
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    args = ap.parse_args()
    if args.start_daemon:
        with own_daemon(args.registries_conf) as (endpoint, pid, base):
            r = soak(endpoint, pid, args.image, args.n, scope=base, bridge=SOAK_BRIDGE)
    elif args.pid is None:
        ap.error("--pid is required with --endpoint")
    else:
        r = soak(args.endpoint, args.pid, args.image, args.n)
    print(f"lifecycles        {r['lifecycles']} in {r['seconds']:.0f} s ({r['seconds'] / r['lifecycles'] * 1000:.0f} "
          "ms each)")
    print(f"daemon RSS        {r['rss_kb'][0] / 1024:.1f} MB -> {r['rss_kb'][1] / 1024:.1f} MB "
          f"({r['rss_growth_pct']:+.1f} %)")
    print(f"daemon open fds   {r['fds'][0]} -> {r['fds'][1]}")
    print(f"left on the host  {r['left_on_host'] or 'nothing'}")
    ok = r["rss_growth_pct"] < 10 and r["fds"][1] <= r["fds"][0] and not r["left_on_host"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
