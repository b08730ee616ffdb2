#!/usr/bin/env python3
"""Small read-only CRI calls against pycri, other runtimes and bare grpcio servers, side by side.

    bench/reads.py [--endpoint unix:///run/pycri/pycri.sock] [--compare [LABEL=]ENDPOINT ...]
                   [-n 500] [--rounds 4] [--image IMAGE] [--no-bare] [--registries-conf FILE]

On every runtime it pulls IMAGE and starts one host-network pod with one container, then times
Version, Status, ContainerStatus, PodSandboxStatus, ImageStatus, ListImages, ListContainers and
ListPodSandbox: N calls of each per round, the targets taking turns round by round (so a change in the
machine's load hits them all alike). It prints p50 and p99 per call and target, and every target's p50
over pycri's.

The bare targets are what pycri's transport costs by itself: a grpcio server in a process of its own, on
a unix socket like pycri's, that parses each request and answers with the bytes pycri answered (captured
before the first round), doing nothing else. `bare-aio` is grpc.aio, as pycri serves; `bare-sync` is
grpcio's thread-pool server; `bare-sync-hop` is that server handing each call to a coroutine on an event
loop in another thread, what every call that changes state would cost if pycri's reads were answered from
server threads. pycri's p50 minus bare-aio's is its own overhead per call; the bare targets against each
other say whether another server arrangement would be faster on this machine.
Without --endpoint it starts a pycri daemon in a temporary root (host network only), pulling through
--registries-conf (default: the critest kit's, whose registry serves 127.0.0.1:5000).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402
from bench.sandbox import percentile, runtime_endpoint  # noqa: E402

DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
KIT_REGISTRIES = Path("/work/shared/critest/registries.conf")
RUNTIME, IMAGE = "runtime.v1.RuntimeService", "runtime.v1.ImageService"
CALLS = (("Version", RUNTIME), ("Status", RUNTIME), ("ContainerStatus", RUNTIME), ("PodSandboxStatus", RUNTIME),
         ("ImageStatus", IMAGE), ("ListImages", IMAGE), ("ListContainers", RUNTIME), ("ListPodSandbox", RUNTIME))


def request_class(method: str):
    return getattr(api_pb2, f"{method}Request")


class Target:
    """One endpoint with a pod and a container of its own (none for a bare server)."""

    def __init__(self, label: str, endpoint: str):
        self.label, self.endpoint = label, endpoint
        self.channel = grpc.insecure_channel(endpoint)
        self.pod_id = self.container_id = ""
        self.image = ""
        self.samples: dict[str, list[float]] = {m: [] for m, _ in CALLS}

    def call(self, method: str, service: str):
        return self.channel.unary_unary(f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=lambda b: b)

    def requests(self) -> dict[str, object]:
        return {
            "Version": api_pb2.VersionRequest(), "Status": api_pb2.StatusRequest(),
            "ContainerStatus": api_pb2.ContainerStatusRequest(container_id=self.container_id),
            "PodSandboxStatus": api_pb2.PodSandboxStatusRequest(pod_sandbox_id=self.pod_id),
            "ImageStatus": api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=self.image)),
            "ListImages": api_pb2.ListImagesRequest(), "ListContainers": api_pb2.ListContainersRequest(),
            "ListPodSandbox": api_pb2.ListPodSandboxRequest()}

    def setup(self, image: str, log_dir: str) -> None:
        rt, im = api_pb2_grpc.RuntimeServiceStub(self.channel), api_pb2_grpc.ImageServiceStub(self.channel)
        im.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
        self.image = image
        name = f"reads-{os.getpid()}-{self.label}"
        pod = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
            log_directory=f"{log_dir}/{self.label}",
            linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE))))
        self.pod_id = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
        config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"),
                                         image=api_pb2.ImageSpec(image=image, user_specified_image=image),
                                         command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'],
                                         log_path="c.log")
        self.container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=self.pod_id, config=config, sandbox_config=pod), timeout=120).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=self.container_id), timeout=120)

    def teardown(self) -> None:
        if self.pod_id:
            rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
            try:
                rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=self.pod_id), timeout=120)
                rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.pod_id), timeout=120)
            except grpc.RpcError as e:
                print(f"{self.label}: cleanup of pod {self.pod_id}: {e.code().name}: {e.details()}", file=sys.stderr)
        self.channel.close()

    def answers(self) -> dict[str, str]:
        """The response bytes of every call, hex, for a bare server to replay."""
        return {f"/{service}/{method}": self.call(method, service)(self.requests()[method], timeout=10).hex()
                for method, service in CALLS}

    def run_round(self, n: int) -> None:
        requests = self.requests()
        for method, service in CALLS:
            fn, request = self.call(method, service), requests[method]
            for _ in range(min(50, n)):  # warm the server's path for this call after the other targets' turns
                fn(request, timeout=10)
            samples = self.samples[method]
            for _ in range(n):
                t = time.perf_counter()
                fn(request, timeout=10)
                samples.append((time.perf_counter() - t) * 1e3)


# --- the bare servers ---------------------------------------------------------------------------------------

def _handlers(answers: dict[str, str], asynchronous: bool, hop=None) -> list:
    by_service: dict[str, dict] = {}
    for path, hex_body in answers.items():
        service, method = path.strip("/").split("/")
        body = bytes.fromhex(hex_body)
        parse = request_class(method).FromString
        if asynchronous:
            async def handler(request, context, body=body):
                return body
        elif hop is not None:
            def handler(request, context, body=body):
                return hop(body)
        else:
            def handler(request, context, body=body):
                return body
        by_service.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=parse, response_serializer=None)
    return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]


def serve_bare(kind: str, socket_path: str, answers_file: str) -> None:
    answers = json.loads(Path(answers_file).read_text())
    if kind == "aio":
        import asyncio

        async def main() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(_handlers(answers, True))
            server.add_insecure_port(f"unix://{socket_path}")
            await server.start()
            await server.wait_for_termination()

        asyncio.run(main())
    else:
        import asyncio
        import threading
        from concurrent.futures import ThreadPoolExecutor

        hop = None
        if kind == "sync-hop":  # each call answered by a coroutine on an event loop in another thread
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()

            async def on_loop(body):
                return body

            def hop(body):
                return asyncio.run_coroutine_threadsafe(on_loop(body), loop).result()
        server = grpc.server(ThreadPoolExecutor(max_workers=10))
        server.add_generic_rpc_handlers(_handlers(answers, False, hop))
        server.add_insecure_port(f"unix://{socket_path}")
        server.start()
        server.wait_for_termination()


def start_bare(kind: str, answers: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str]:
    answers_file = workdir / "answers.json"
    answers_file.write_text(json.dumps(answers))
    socket_path = workdir / f"bare-{kind}.sock"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", kind, str(socket_path), str(answers_file)])
    for _ in range(200):
        if socket_path.exists():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise SystemExit(f"the bare {kind} server did not start")
    return proc, f"unix://{socket_path}"


# --- report -------------------------------------------------------------------------------------------------

def report(targets: list[Target], n: int, rounds: int) -> None:
    labels = [t.label for t in targets]
    print(f"p50 / p99 in ms, {n} calls x {rounds} rounds per call and target, targets alternating by round")
    print(f"{'call':17s}" + "".join(f"{label:>20s}" for label in labels))
    for method, _ in CALLS:
        cells = []
        for t in targets:
            s = t.samples[method]
            cells.append(f"{statistics.median(s):7.3f} / {percentile(s, 99):7.3f}" if s else "-")
        print(f"{method:17s}" + "".join(f"{c:>20s}" for c in cells))
    ours = targets[0]
    print(f"\np50 over {ours.label}'s p50")
    print(f"{'call':17s}" + "".join(f"{label:>12s}" for label in labels[1:]))
    for method, _ in CALLS:
        base = statistics.median(ours.samples[method])
        print(f"{method:17s}" + "".join(f"{statistics.median(t.samples[method]) / base:12.2f}" for t in targets[1:]))
    bare = next((t for t in targets if t.label == "bare-aio"), None)
    if bare is not None:
        print(f"\n{ours.label}'s own overhead per call (p50 minus bare-aio's p50), ms")
        for method, _ in CALLS:
            extra = statistics.median(ours.samples[method]) - statistics.median(bare.samples[method])
            print(f"{method:17s}{extra:8.3f}")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-bare":
        serve_bare(*sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    add_compare_argument(ap)
    ap.add_argument("-n", type=int, default=500, help="calls of each kind per round and target")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--no-bare", action="store_true", help="skip the bare grpcio servers")
    ap.add_argument("--registries-conf", default=str(KIT_REGISTRIES))
    args = ap.parse_args()
    settings = {"log_level": "info", "storage": {"registries_conf": args.registries_conf}}
    bare_procs: list[subprocess.Popen] = []
    targets: list[Target] = []
    with runtime_endpoint(args.endpoint, settings, None) as (endpoint, _), \
            tempfile.TemporaryDirectory(prefix="pycri-bench-reads") as work:
        try:
            targets.append(Target("pycri", endpoint))
            targets += [Target(label, ep) for label, ep in parse_compare(args.compare)]
            for t in targets:
                t.setup(args.image, work)
            if not args.no_bare:
                answers = targets[0].answers()
                for kind in ("aio", "sync", "sync-hop"):
                    proc, ep = start_bare(kind, answers, Path(work))
                    bare_procs.append(proc)
                    targets.append(Target(f"bare-{kind}", ep))
            for _ in range(args.rounds):
                for t in targets:
                    t.run_round(args.n)
            report(targets, args.n, args.rounds)
        finally:
            for t in targets:
                t.teardown()
            for proc in bare_procs:
                proc.terminate()
                proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
