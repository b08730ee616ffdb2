#!/usr/bin/env python3
"""Pod + container lifecycle latency per step, p50 and p90, as the critest kit's crictl benchmark does it.

    bench/lifecycle.py [--endpoint unix:///run/pycri/pycri.sock] [-n 20] [--image IMAGE] [--compare [LABEL=]ENDPOINT ...]
                       [--handler crun] [--registries-conf FILE] [--host-network]

Each round: RunPodSandbox, CreateContainer, StartContainer, StopContainer (timeout 10; the container traps
SIGTERM), RemoveContainer, StopPodSandbox, RemovePodSandbox. Without --endpoint it starts a pycri daemon in a
temporary root on a private bridge network, pulling through --registries-conf (default: the critest kit's,
whose registry serves 127.0.0.1:5000). It also prints the daemon's RSS idle and the PSS each running
container adds (conmon), and the same figures for each --compare runtime (the kit's containerd, a CRI-O socket).
Targets (critest benchmark medians on this machine, containerd 1.6 / CRI-O 1.36): create 10 / 90 ms,
start 57 / 19, stop 52 / 129, remove 3 / 17.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402
from bench.sandbox import BenchNetwork, percentile, print_targets, runtime_endpoint  # noqa: E402

STEPS = ("runp", "create", "start", "stop", "rm", "stopp", "rmp")
REFERENCE = {"create": (10, 90), "start": (57, 19), "stop": (52, 129), "rm": (3, 17)}
DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
KIT_REGISTRIES = Path(__file__).resolve().parent.parent.parent / "shared" / "critest" / "registries.conf"


def round_trip(stub, image: str, name: str, log_dir: str, handler: str, host_network: bool) -> dict[str, float]:
    ns = api_pb2.NamespaceOption(network=api_pb2.NODE if host_network else api_pb2.POD)
    pod = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
        hostname="" if host_network else name,  # kubelet sends none with host network
        log_directory=f"{log_dir}/{name}",
        linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
    ctr = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=f"c-{name}"),
        image=api_pb2.ImageSpec(image=image, user_specified_image=image),
        command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'], log_path="c.log")
    t = [time.perf_counter()]
    pod_id = stub.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod, runtime_handler=handler),
                                timeout=120).pod_sandbox_id
    t.append(time.perf_counter())
    cid = stub.CreateContainer(api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod),
                               timeout=120).container_id
    t.append(time.perf_counter())
    stub.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=120)
    t.append(time.perf_counter())
    stub.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10), timeout=120)
    t.append(time.perf_counter())
    stub.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=120)
    t.append(time.perf_counter())
    stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    t.append(time.perf_counter())
    stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    t.append(time.perf_counter())
    return {step: (t[i + 1] - t[i]) * 1e3 for i, step in enumerate(STEPS)}


def measure(endpoint: str, rounds: int, image: str, handler: str, host_network: bool) -> dict[str, tuple[float, float]]:
    channel = grpc.insecure_channel(endpoint)
    runtime, images = api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel)
    images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
    tag = f"lc{os.getpid()}-{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="pycri-bench-logs") as logs:
        round_trip(runtime, image, f"{tag}-warm", logs, handler, host_network)
        samples = [round_trip(runtime, image, f"{tag}-{i}", logs, handler, host_network) for i in range(rounds)]
    channel.close()
    return {s: (statistics.median(x[s] for x in samples), percentile([x[s] for x in samples], 90)) for s in STEPS}


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def conmon_pids(root_marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if os.path.basename(cmdline.split(b"\0", 1)[0]) == b"conmon" and root_marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def memory_figures(endpoint: str, daemon_pid: int, marker: str, image: str, count: int) -> str:
    """Daemon RSS idle, then PSS per running container (conmon) with ``count`` host-network pods running."""
    channel = grpc.insecure_channel(endpoint)
    stub = api_pb2_grpc.RuntimeServiceStub(channel)
    idle = rss_kib(daemon_pid)
    pods = []
    with tempfile.TemporaryDirectory(prefix="pycri-bench-logs") as logs:
        try:
            for i in range(count):
                name = f"mem{os.getpid()}-{i}"
                ns = api_pb2.NamespaceOption(network=api_pb2.NODE)
                pod = api_pb2.PodSandboxConfig(
                    metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
                    log_directory=f"{logs}/{name}", linux=api_pb2.LinuxPodSandboxConfig(
                        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
                pod_id = stub.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
                pods.append(pod_id)
                cid = stub.CreateContainer(api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id, sandbox_config=pod, config=api_pb2.ContainerConfig(
                        metadata=api_pb2.ContainerMetadata(name="c"),
                        image=api_pb2.ImageSpec(image=image, user_specified_image=image),
                        command=["sleep", "3600"], log_path="c.log")), timeout=120).container_id
                stub.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=120)
            busy = rss_kib(daemon_pid)
            monitors = conmon_pids(marker)
            per_container = sum(pss_kib(p) for p in monitors) / max(1, len(monitors))
        finally:
            for pod_id in pods:
                stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
                stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    channel.close()
    return (f"memory: daemon RSS idle {idle / 1024:.1f} MB, with {count} running pods {busy / 1024:.1f} MB; "
            f"conmon PSS per running container {per_container / 1024:.2f} MB ({len(monitors)} conmons)")


def report(label: str, figures: dict[str, tuple[float, float]]) -> None:
    print(f"{label:10s} " + "  ".join(f"{s} {p50:6.1f}/{p90:6.1f}" for s, (p50, p90) in figures.items())
          + "   (p50/p90 ms)")
    print(f"{label:10s} total p50 {sum(p50 for p50, _ in figures.values()):.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    add_compare_argument(ap)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--handler", default="", help="runtime handler (RuntimeClass) for the pods, e.g. crun")
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    ap.add_argument("--host-network", action="store_true", help="pods on the host network (no CNI)")
    ap.add_argument("--memory-pods", type=int, default=10, help="pods to run for the memory figures (0: skip)")
    args = ap.parse_args()
    settings = {"log_level": "info", "storage": {"registries_conf": args.registries_conf}}
    with runtime_endpoint(args.endpoint, settings, None if args.host_network else BenchNetwork()) as (endpoint, daemon):
        ours = measure(endpoint, args.n, args.image, args.handler, args.host_network)
        report("pycri", ours)
        print_targets(REFERENCE, ours)
        if daemon is not None and args.memory_pods:
            print(memory_figures(endpoint, daemon.proc.pid, str(daemon.base), args.image, args.memory_pods))
        for label, other in parse_compare(args.compare):
            theirs = measure(other, args.n, args.image, "", args.host_network)
            report(label, theirs)
            print("ratio      " + "  ".join(f"{s} {ours[s][0] / theirs[s][0]:.2f}" for s in STEPS)
                  + f"  (p50 pycri/{label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
