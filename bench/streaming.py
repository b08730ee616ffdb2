#!/usr/bin/env python3
"""Streaming figures: exec round trip and port-forward throughput, through the URLs Exec/PortForward return.

    bench/streaming.py [--endpoint unix:///run/pycri/pycri.sock --image IMAGE] [-n 50] [--mb 100]
                       [--compare [LABEL=]ENDPOINT ... --compare-image IMAGE]

exec: Exec RPC + SPDY upgrade + `echo hi` to its exit status, as `kubectl exec` does it (p50/p90 ms).
port-forward: --mb MB up through a forwarded connection into a sink that answers with what it counted, then the
same amount down (MB/s each way).  Pods are on the host network, so the bench's own loopback server is the
pod's.  Without --endpoint a pycri daemon is started in a temporary root, with a busybox image served by a
private docker-registry.  With --compare (e.g. the critest kit's containerd 1.6, when it is installed and
running) the same figures are printed for it, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402
from bench.sandbox import percentile  # noqa: E402
from tests.streamclient import SpdyPortForward, spdy_exec  # noqa: E402

CHUNK = 256 << 10


class Pod:
    """A host-network pod with one long-running container, removed on exit.

    No hostname, as kubelet sends none for host-network pods: runc refuses one without a private UTS
    namespace, so containerd fails such a pod."""

    def __init__(self, endpoint: str, image: str, logs: str):
        self.channel = grpc.insecure_channel(endpoint)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        api_pb2_grpc.ImageServiceStub(self.channel).PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
        name = f"stream-bench-{os.getpid()}"
        self.config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
            log_directory=logs, linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE))))
        self.id = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=self.config), timeout=120).pod_sandbox_id
        try:
            self.container = self.runtime.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=self.id, sandbox_config=self.config, config=api_pb2.ContainerConfig(
                    metadata=api_pb2.ContainerMetadata(name="c"),
                    image=api_pb2.ImageSpec(image=image, user_specified_image=image),
                    command=["sleep", "3600"], log_path="c.log")), timeout=120).container_id
            self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=self.container), timeout=120)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=self.id), timeout=120)
        self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=120)
        self.channel.close()


async def exec_latencies(pod: Pod, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds + 1):  # the first one warms up
        start = time.perf_counter()
        url = (await asyncio.to_thread(pod.runtime.Exec, api_pb2.ExecRequest(
            container_id=pod.container, cmd=["echo", "hi"], stdout=True, stderr=True), timeout=30)).url
        result = await spdy_exec(url)
        samples.append((time.perf_counter() - start) * 1e3)
        if result.stdout != b"hi\n" or result.exit_code != 0:
            raise RuntimeError(f"exec returned {result}")
    return samples[1:]


async def forward_throughput(pod: Pod, megabytes: int) -> tuple[float, float]:
    """(upload MB/s, download MB/s) through one forwarded connection each.

    The upload ends when the sink (in this process) sees EOF, not with a reply through the forward:
    containerd 1.6 ends the whole forwarded connection once the client half-closes, so no reply would
    arrive."""
    size = megabytes << 20
    block = os.urandom(CHUNK)
    uploaded: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def sink(reader, writer):
        mode = await reader.readexactly(1)
        if mode == b"u":
            count = 0
            while data := await reader.read(CHUNK):
                count += len(data)
            uploaded.set_result(count)
        else:
            for _ in range(size // CHUNK):
                writer.write(block)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = (await asyncio.to_thread(pod.runtime.PortForward, api_pb2.PortForwardRequest(
            pod_sandbox_id=pod.id, port=[port]), timeout=30)).url
        forwarder = await SpdyPortForward.open(url)
        try:
            data, _ = await forwarder.connect(port)
            start = time.perf_counter()
            await data.write(b"u")
            for _ in range(size // CHUNK):
                await data.write(block)
            await data.close()
            counted = await asyncio.wait_for(uploaded, 120)
            upload = megabytes / (time.perf_counter() - start)
            if counted != size:
                raise RuntimeError(f"the sink counted {counted} of {size} bytes")
            data, _ = await forwarder.connect(port)
            start = time.perf_counter()
            await data.write(b"d")
            received = 0
            while chunk := await data.read(1 << 20):
                received += len(chunk)
            download = megabytes / (time.perf_counter() - start)
            if received != size:
                raise RuntimeError(f"received {received} of {size} bytes")
        finally:
            await forwarder.close()
    finally:
        server.close()
    return upload, download


def measure(label: str, endpoint: str, image: str, rounds: int, megabytes: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="pycri-bench-logs") as logs:
        pod = Pod(endpoint, image, logs)
        try:
            latencies = asyncio.run(exec_latencies(pod, rounds))
            upload, download = asyncio.run(forward_throughput(pod, megabytes))
        finally:
            pod.close()
    p50 = statistics.median(latencies)
    print(f"{label:10s} exec echo hi: p50 {p50:.1f} ms, p90 {percentile(latencies, 90):.1f} ms "
          f"(n={rounds}, Exec RPC + SPDY session)")
    print(f"{label:10s} port-forward {megabytes} MB: up {upload:.0f} MB/s, down {download:.0f} MB/s")
    return p50, upload, download


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    ap.add_argument("--image", default="")
    add_compare_argument(ap)
    ap.add_argument("--compare-image", default="registry.k8s.io/e2e-test-images/busybox:1.29-2")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    daemon = registry = work = None
    try:
        endpoint, image = args.endpoint, args.image
        if endpoint is None:
            from conformance.daemon import Daemon
            from tests.imagebuild import build_busybox_image, push_to_registry
            from tests.integration.helpers_registry import start_registry

            work = Path(tempfile.mkdtemp(prefix="pycri-bench-stream"))
            registry = start_registry(work / "registry")
            host = next(registry)
            push_to_registry(host, "bench/busybox", "1", build_busybox_image())
            conf = work / "registries.conf"
            conf.write_text(f'[[registry]]\nprefix = "bench.test"\nlocation = "{host}"\ninsecure = true\n')
            daemon = Daemon({"log_level": "warning", "storage": {"registries_conf": str(conf)}}).start()
            endpoint, image = f"unix://{daemon.socket}", "bench.test/bench/busybox:1"
        ours = measure("pycri", endpoint, image, args.n, args.mb)
        for label, other in parse_compare(args.compare):
            theirs = measure(label, other, args.compare_image, args.n, args.mb)
            print(f"ratio      exec p50 {ours[0] / theirs[0]:.2f} (pycri/{label}, lower is better); "
                  f"port-forward up {ours[1] / theirs[1]:.2f}, down {ours[2] / theirs[2]:.2f} (higher is better)")
    finally:
        if daemon is not None:
            leaks = daemon.cleanup()
            if leaks:
                print(f"the daemon left state behind: {leaks}")
        if registry is not None:
            registry.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
