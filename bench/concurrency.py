#!/usr/bin/env python3
"""N pods brought up at once and torn down at once, as kubelet does when a node takes or loses a workload.

    bench/concurrency.py [--endpoint unix:///run/pycri/pycri.sock] [-n 10] [--containers 1] [--rounds 3]
                         [--image IMAGE] [--compare [LABEL=]ENDPOINT ...] [--handler crun] [--registries-conf FILE]
                         [--host-network] [--pollers 4]

Each round, one thread per pod, all released together: up is RunPodSandbox, then CreateContainer and
StartContainer of each of its containers (created together, then started together); once every pod is up,
down is StopContainer (timeout 10; the containers trap SIGTERM), RemoveContainer, StopPodSandbox and
RemovePodSandbox. Meanwhile --pollers more threads each poll ListPodSandbox, ListContainers and Status back to back,
as kubelet's PLEG and node status loops do. One poller gave a p99 that was the 3rd-6th worst of a few hundred
samples, which moved 2.5x from wave to wave; four give several times the samples, and the same pollers run
against every runtime measured.
It prints the wall time of each phase, pods per second, p50/p90 of every call and p50/p90/p99 of the polls over all
rounds; the same for each --compare runtime (the kit's containerd, a CRI-O socket) and the ratios
pycri/that runtime (below 1: pycri is faster). Without --endpoint it starts a pycri daemon in a temporary root
on a private bridge network (10.125.0.0/16, ipMasq on), pulling through --registries-conf (default: the
critest kit's, whose registry serves 127.0.0.1:5000). Whatever it created is removed, even when a call fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402
from bench.sandbox import BenchNetwork, percentile, runtime_endpoint  # noqa: E402

UP = ("runp", "create", "start")
DOWN = ("stop", "rm", "stopp", "rmp")
POLLS = ("ListPodSandbox", "ListContainers", "Status")
DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
KIT_REGISTRIES = Path(__file__).resolve().parent.parent.parent / "shared" / "critest" / "registries.conf"
BRIDGE = "pycriconc0"


class Wave:
    """One round against one endpoint: the pods it made (for cleanup) and a list of milliseconds per call."""

    def __init__(self, runtime: api_pb2_grpc.RuntimeServiceStub, image: str, handler: str, host_network: bool,
                 containers: int, log_dir: str, tag: str):
        self.rt, self.image, self.handler, self.host_network = runtime, image, handler, host_network
        self.containers, self.log_dir, self.tag = containers, log_dir, tag
        self.samples: dict[str, list[float]] = {step: [] for step in UP + DOWN + POLLS}
        self.pods: dict[str, list[str]] = {}  # pod id -> its container ids
        self._lock = threading.Lock()

    def _timed(self, step: str, fn, request):
        t0 = time.perf_counter()
        response = fn(request, timeout=300)
        elapsed = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self.samples[step].append(elapsed)
        return response

    def _pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        ns = api_pb2.NamespaceOption(network=api_pb2.NODE if self.host_network else api_pb2.POD)
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
            hostname="" if self.host_network else name,  # kubelet sends none with host network
            log_directory=f"{self.log_dir}/{name}",
            linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=ns)))

    def up(self, index: int, pool: ThreadPoolExecutor) -> None:
        name = f"{self.tag}-{index}"
        pod = self._pod_config(name)
        pod_id = self._timed("runp", self.rt.RunPodSandbox,
                             api_pb2.RunPodSandboxRequest(config=pod, runtime_handler=self.handler)).pod_sandbox_id
        with self._lock:
            self.pods[pod_id] = []

        def create(i: int) -> str:
            config = api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name=f"c{i}"),
                image=api_pb2.ImageSpec(image=self.image, user_specified_image=self.image),
                command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'], log_path=f"c{i}.log")
            cid = self._timed("create", self.rt.CreateContainer, api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id
            with self._lock:
                self.pods[pod_id].append(cid)
            return cid

        cids = list(pool.map(create, range(self.containers)))
        list(pool.map(lambda cid: self._timed("start", self.rt.StartContainer,
                                              api_pb2.StartContainerRequest(container_id=cid)), cids))

    def down(self, pod_id: str, pool: ThreadPoolExecutor) -> None:
        cids = self.pods[pod_id]
        list(pool.map(lambda cid: self._timed("stop", self.rt.StopContainer,
                                              api_pb2.StopContainerRequest(container_id=cid, timeout=10)), cids))
        list(pool.map(lambda cid: self._timed("rm", self.rt.RemoveContainer,
                                              api_pb2.RemoveContainerRequest(container_id=cid)), cids))
        self._timed("stopp", self.rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self._timed("rmp", self.rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        with self._lock:
            del self.pods[pod_id]

    def cleanup(self) -> None:
        """After a failure: stop and remove whatever this wave made, ignoring errors (best effort)."""
        for pod_id in list(self.pods):
            for call, request in ((self.rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)),
                                  (self.rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))):
                try:
                    call(request, timeout=120)
                except grpc.RpcError as e:
                    print(f"cleanup of pod {pod_id}: {e.code().name}: {e.details()}", file=sys.stderr)


def poll(wave: Wave, done: threading.Event) -> None:
    """The read-only calls kubelet keeps making while pods come and go, timed one after another."""
    requests = {"ListPodSandbox": api_pb2.ListPodSandboxRequest(), "ListContainers": api_pb2.ListContainersRequest(),
                "Status": api_pb2.StatusRequest()}
    while not done.is_set():
        for name, request in requests.items():
            wave._timed(name, getattr(wave.rt, name), request)


def run_wave(wave: Wave, pods: int, pollers: int) -> tuple[float, float]:
    """Bring `pods` pods up together, then down together; wall seconds of each phase."""
    # Threads for every pod and, inside each, for its containers: nothing waits for a free worker.
    done = threading.Event()
    threads = [threading.Thread(target=poll, args=(wave, done), daemon=True) for _ in range(pollers)]
    with ThreadPoolExecutor(pods) as outer, ThreadPoolExecutor(pods * wave.containers) as inner:
        for poller in threads:
            poller.start()
        try:
            t0 = time.perf_counter()
            list(outer.map(lambda i: wave.up(i, inner), range(pods)))
            t1 = time.perf_counter()
            list(outer.map(lambda pod_id: wave.down(pod_id, inner), list(wave.pods)))
            t2 = time.perf_counter()
        finally:
            done.set()
            for poller in threads:
                poller.join()
    return t1 - t0, t2 - t1


def measure(endpoint: str, pods: int, containers: int, rounds: int, image: str, handler: str,
            host_network: bool, pollers: int) -> dict:
    channel = grpc.insecure_channel(endpoint)
    runtime, images = api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel)
    images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
    tag = f"cc{os.getpid()}-{int(time.time())}"
    samples: dict[str, list[float]] = {step: [] for step in UP + DOWN + POLLS}
    walls = []
    try:
        with tempfile.TemporaryDirectory(prefix="pycri-bench-logs") as logs:
            for r in range(rounds + 1):  # round 0 warms caches and is not counted
                wave = Wave(runtime, image, handler, host_network, containers, logs, f"{tag}-r{r}")
                try:
                    walls_r = run_wave(wave, pods, pollers)
                finally:
                    wave.cleanup()
                if r:
                    walls.append(walls_r)
                    for step, values in wave.samples.items():
                        samples[step] += values
    finally:
        channel.close()
    up = statistics.median(w[0] for w in walls)
    down = statistics.median(w[1] for w in walls)
    return {"up": up, "down": down,
            "steps": {s: (statistics.median(samples[s]), percentile(samples[s], 90)) for s in UP + DOWN},
            "polls": {s: (statistics.median(samples[s]), percentile(samples[s], 90), percentile(samples[s], 99),
                          len(samples[s])) for s in POLLS}}


def report(label: str, figures: dict, pods: int, containers: int, rounds: int) -> None:
    up, down = figures["up"], figures["down"]
    print(f"{label:10s} {pods} pods x {containers} containers/pod, median of {rounds} rounds: "
          f"up {up * 1e3:7.1f} ms ({pods / up:5.1f} pods/s)  down {down * 1e3:7.1f} ms ({pods / down:5.1f} pods/s)  "
          f"total {(up + down) * 1e3:7.1f} ms")
    print(f"{label:10s} " + "  ".join(f"{s} {p50:6.1f}/{p90:6.1f}" for s, (p50, p90) in figures["steps"].items())
          + "   (p50/p90 ms per call, under load)")
    print(f"{label:10s} " + "  ".join(f"{s} {p50:5.1f}/{p90:5.1f}/{p99:5.1f} (n={n})"
                                      for s, (p50, p90, p99, n) in figures["polls"].items())
          + "   (p50/p90/p99 ms of the polls meanwhile)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    add_compare_argument(ap)
    ap.add_argument("-n", "--pods", type=int, default=10, help="pods brought up and torn down at once")
    ap.add_argument("--containers", type=int, default=1, help="containers per pod")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--handler", default="", help="runtime handler (RuntimeClass) for the pods, e.g. crun")
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    ap.add_argument("--host-network", action="store_true", help="pods on the host network (no CNI)")
    ap.add_argument("--pollers", type=int, default=4, help="threads polling List*/Status during the waves")
    args = ap.parse_args()
    if args.pollers < 1:
        ap.error("--pollers must be at least 1 (the polls' figures are what it reports)")
    settings = {"log_level": "info", "storage": {"registries_conf": args.registries_conf}}
    network = None if args.host_network else BenchNetwork(bridge=BRIDGE, subnet="10.125.0.0/16",
                                                          name="pycri-bench-concurrency")
    with runtime_endpoint(args.endpoint, settings, network) as (endpoint, _):
        shape = (args.pods, args.containers, args.rounds)
        ours = measure(endpoint, *shape, args.image, args.handler, args.host_network, args.pollers)
        report("pycri", ours, *shape)
        for label, other in parse_compare(args.compare):
            theirs = measure(other, *shape, args.image, "", args.host_network, args.pollers)
            report(label, theirs, *shape)
            print(f"ratio      up {ours['up'] / theirs['up']:.2f}  down {ours['down'] / theirs['down']:.2f}  "
                  f"total {(ours['up'] + ours['down']) / (theirs['up'] + theirs['down']):.2f}  "
                  + "  ".join(f"{s} {ours['steps'][s][0] / theirs['steps'][s][0]:.2f}" for s in UP + DOWN)
                  + f"  (wall time and p50 pycri/{label})")
            print("ratio      " + "  ".join(f"{s} p90 {ours['polls'][s][1] / theirs['polls'][s][1]:.2f} "
                                            f"p99 {ours['polls'][s][2] / theirs['polls'][s][2]:.2f}" for s in POLLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
