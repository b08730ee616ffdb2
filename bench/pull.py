"""Cold image pulls through CRI from a loopback registry: MB/s, time, and the runtime's peak RSS.

By default it starts a docker-registry and a pycri daemon of its own in a temp dir. With
--endpoint it pulls through another runtime instead (containerd, CRI-O) from --registry, naming
images with --name-prefix (a registry name that runtime maps to the registry), and reads that
runtime's peak RSS from --pid. Each pull is cold: the image is removed through CRI first.

Decompressor choice (storage/unpack.py), measured here on 200 MB of word-like text, gzip -6 to
87 MB, read in 1 MiB chunks and hashed with sha256 as the unpacker does (2 cores, Debian 12):
    zlib (gzip module) 221 MB/s | isal.igzip 539 MB/s | isal.igzip_threaded 679 MB/s | `gzip -dc` pipe 164 MB/s
so layers use ISA-L, in its own thread from 8 MiB of compressed layer up (below that the thread
start costs more than it saves). 256 KiB buffers keep the peak RSS of a 5-layer pull near 70 MB.

    python bench/pull.py [--big-mb 200] [--runs 3] [--busybox-runs 10]
    python bench/pull.py --endpoint unix:///run/containerd/containerd.sock --registry 127.0.0.1:5000 \\
        --name-prefix registry.k8s.io --pid $(pidof containerd)
    python bench/pull.py --registries-conf ../shared/critest/registries.conf \\
        --critest-image registry.k8s.io/e2e-test-images/busybox:1.29-2   # with the critest kit's registry
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from tests.imagebuild import Entry, build_busybox_image, build_image, tar_layer  # noqa: E402


def compressible_layer(size: int, seed: int) -> bytes:
    """A tar of a few files of word-like text: compresses about 2:1 with gzip, like real layers."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 8)).hex().encode() for _ in range(5000)]
    files, per_file = [], 8 << 20
    for i in range(max(1, size // per_file)):
        parts, n = [], 0
        while n < per_file:
            chunk = b" ".join(rng.choices(words, k=2000))
            parts.append(chunk)
            n += len(chunk)
        files.append(Entry(f"data/{seed}/{i}.txt", data=b"".join(parts)[:per_file]))
    return tar_layer([Entry("data", "dir"), Entry(f"data/{seed}", "dir"), *files])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_pull(images: api_pb2_grpc.ImageServiceStub, name: str) -> float:
    images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=600)
    start = time.perf_counter()
    images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=600)
    return time.perf_counter() - start


def lifecycle(images: api_pb2_grpc.ImageServiceStub, name: str, rounds: int = 20, parallel: int = 2) -> None:
    """critest's image benchmark: Pull, Status, Remove of one image, `parallel` at a time."""
    from concurrent.futures import ThreadPoolExecutor
    spec = api_pb2.ImageSpec(image=name)

    def one(_: int) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        ref = images.PullImage(api_pb2.PullImageRequest(image=spec), timeout=600).image_ref
        t1 = time.perf_counter()
        images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
        t2 = time.perf_counter()
        images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    with ThreadPoolExecutor(parallel) as pool:
        samples = list(pool.map(one, range(rounds)))
    for i, op in enumerate(("PullImage", "ImageStatus", "RemoveImage")):
        values = [s[i] * 1000 for s in samples]
        print(f"critest-like {op:12} rounds={rounds} parallel={parallel} median={statistics.median(values):7.2f} ms  "
              f"max={max(values):7.2f} ms")


def report(label: str, times: list[float], size: int) -> None:
    med = statistics.median(times)
    print(f"{label:28} runs={len(times):<3} median={med * 1000:9.1f} ms  min={min(times) * 1000:9.1f} ms  "
          f"{size / med / 1e6:8.1f} MB/s (compressed {size / 1e6:.1f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mb", type=int, default=200, help="uncompressed size of the 5-layer image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busybox-runs", type=int, default=10)
    parser.add_argument("--endpoint", help="CRI endpoint of another runtime (default: start pycri)")
    parser.add_argument("--registry", help="host:port of a running registry (default: start one)")
    parser.add_argument("--name-prefix", help="registry name the runtime maps to --registry")
    parser.add_argument("--pid", type=int, help="runtime pid, for its peak RSS")
    parser.add_argument("--critest-image", help="also run critest's image lifecycle benchmark on this image "
                        "(a name the runtime can pull, e.g. registry.k8s.io/e2e-test-images/busybox:1.29-2)")
    parser.add_argument("--registries-conf", help="registries.conf for the pycri daemon this script starts")
    args = parser.parse_args()

    print(f"building a {args.big_mb} MB 5-layer gzip image and a busybox image ...", flush=True)
    layers = [compressible_layer((args.big_mb << 20) // 5, seed) for seed in range(5)]
    big = build_image(layers)
    busybox = build_busybox_image()
    big_size = sum(len(b) for b in big.blobs.values())
    busybox_size = sum(len(b) for b in busybox.blobs.values())

    with tempfile.TemporaryDirectory(prefix="pycri-bench-") as tmp:
        closers = []
        try:
            registry = args.registry
            if registry is None:
                from tests.integration.helpers_registry import start_registry
                gen = start_registry(Path(tmp) / "registry")
                registry = next(gen)
                closers.append(gen.close)
            from tests.imagebuild import push_to_registry
            push_to_registry(registry, "bench/big", "1", big)
            push_to_registry(registry, "bench/busybox", "1", busybox)
            prefix = args.name_prefix or registry
            endpoint, pid = args.endpoint, args.pid
            if endpoint is None:
                from conformance.daemon import Daemon
                conf = Path(tmp) / "registries.conf"
                extra = Path(args.registries_conf).read_text() + "\n" if args.registries_conf else ""
                conf.write_text(extra + f'[[registry]]\nprefix = "{prefix}"\nlocation = "{registry}"\ninsecure = true\n')
                (Path(tmp) / "d").mkdir()
                daemon = Daemon({"log_level": "info", "storage": {"registries_conf": str(conf)}}, base=Path(tmp) / "d")
                daemon.start()
                closers.append(daemon.cleanup)
                endpoint, pid = f"unix://{daemon.socket}", daemon.proc.pid
            channel = grpc.insecure_channel(endpoint)
            closers.append(channel.close)
            images = api_pb2_grpc.ImageServiceStub(channel)
            print(f"endpoint {endpoint}, registry {registry}, names {prefix}/bench/...")
            report("busybox cold pull", [cold_pull(images, f"{prefix}/bench/busybox:1") for _ in range(args.busybox_runs)],
                   busybox_size)
            report(f"{args.big_mb} MB 5-layer cold pull", [cold_pull(images, f"{prefix}/bench/big:1") for _ in range(args.runs)],
                   big_size)
            images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=f"{prefix}/bench/big:1")))
            if args.critest_image:
                lifecycle(images, args.critest_image)
            if pid:
                print(f"runtime peak RSS (VmHWM of pid {pid}): {peak_rss_mb(pid):.1f} MB")
        finally:
            for close in reversed(closers):
                close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
