"""Cold image pulls through CRI from a loopback registry: MB/s, time, and the runtime's peak RSS.

By default it starts a docker-registry and a pycri daemon of its own in a temp dir. With
--endpoint it pulls through that runtime instead (a pycri daemon of yours, containerd, CRI-O; --label names it)
from --registry, naming images with --name-prefix (a registry name the runtimes map to the registry). Each
--compare runtime (the kit's containerd, a CRI-O socket) takes the same pulls, the runtimes taking turns pull by
pull, and the ratios first/other (and first/better, over the faster of two or more) follow. Each pull is cold:
the image is removed through CRI first. Peak RSS is read from --pid, or from the pid that serves a unix socket.

Decompressor choice (storage/unpack.py), measured here on 200 MB of word-like text, gzip -6 to
87 MB, read in 1 MiB chunks and hashed with sha256 as the unpacker does (2 cores, Debian 12):
    zlib (gzip module) 221 MB/s | isal.igzip 539 MB/s | isal.igzip_threaded 679 MB/s | `gzip -dc` pipe 164 MB/s
so layers use ISA-L, in its own thread from 8 MiB of compressed layer up (below that the thread
start costs more than it saves). 256 KiB buffers keep the peak RSS of a 5-layer pull near 70 MB.

    python bench/pull.py [--big-mb 200] [--runs 3] [--busybox-runs 10]
    python bench/pull.py --endpoint unix:///run/containerd/containerd.sock --registry 127.0.0.1:5000 \\
        --name-prefix registry.k8s.io --pid $(pidof containerd)
    python bench/pull.py --endpoint unix://$PB/cri.sock --registry 127.0.0.1:5000 --name-prefix registry.k8s.io \\
        --compare containerd=unix:///run/containerd/containerd.sock --compare crio=unix:///var/run/crio/crio.sock
    python bench/pull.py --registries-conf ../shared/critest/registries.conf \\
        --critest-image registry.k8s.io/e2e-test-images/busybox:1.29-2   # with the critest kit's registry
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from cri.api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

from bench.compare import add_compare_argument, parse_compare  # noqa: E402
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


def server_pid(endpoint: str) -> int | None:
    """The pid that listens on a unix endpoint (SO_PEERCRED), so every runtime's peak RSS is read alike."""
    if not endpoint.startswith("unix://"):
        return None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(endpoint.removeprefix("unix://"))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


class Target:
    """One runtime: its CRI image client and its pull times."""

    def __init__(self, label: str, endpoint: str, pid: int | None):
        self.label, self.endpoint, self.pid = label, endpoint, pid
        self.channel = grpc.insecure_channel(endpoint)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        self.times: dict[str, list[float]] = {}
        self.lifecycle: dict[str, float] = {}


def cold_pull(images: api_pb2_grpc.ImageServiceStub, name: str) -> float:
    images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=600)
    start = time.perf_counter()
    images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=600)
    return time.perf_counter() - start


def lifecycle(images: api_pb2_grpc.ImageServiceStub, name: str, rounds: int = 20,
              parallel: int = 2) -> dict[str, float]:
    """critest's image benchmark: Pull, Status, Remove of one image, `parallel` at a time; medians in ms."""
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
    medians = {}
    for i, op in enumerate(("PullImage", "ImageStatus", "RemoveImage")):
        values = [s[i] * 1000 for s in samples]
        medians[op] = statistics.median(values)
        print(f"critest-like {op:12} rounds={rounds} parallel={parallel} median={medians[op]:7.2f} ms  "
              f"max={max(values):7.2f} ms")
    return medians


def report(label: str, times: list[float], size: int) -> None:
    med = statistics.median(times)
    print(f"{label:34} runs={len(times):<3} median={med * 1000:9.1f} ms  min={min(times) * 1000:9.1f} ms  "
          f"{size / med / 1e6:8.1f} MB/s (compressed {size / 1e6:.1f} MB)")


def ratios(targets: list[Target]) -> None:
    """first/other of the medians for each other runtime, and first/better over the fastest of them."""
    first, others = targets[0], targets[1:]
    figures = {kind: {t.label: statistics.median(t.times[kind]) for t in targets} for kind in first.times}
    figures |= {f"critest-like {op}": {t.label: t.lifecycle[op] for t in targets} for op in first.lifecycle}
    print(f"\nratios of the medians, {first.label}/other (below 1: {first.label} is faster)")
    heads = [t.label for t in others] + (["better"] if len(others) > 1 else [])
    print(f"{'':34}" + "".join(f"{h:>12}" for h in heads))
    for kind, by_label in figures.items():
        cells = [by_label[first.label] / by_label[t.label] for t in others]
        if len(others) > 1:
            cells.append(by_label[first.label] / min(by_label[t.label] for t in others))
        print(f"{kind:34}" + "".join(f"{c:12.2f}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mb", type=int, default=200, help="uncompressed size of the 5-layer image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busybox-runs", type=int, default=10)
    parser.add_argument("--endpoint", help="CRI endpoint of the runtime measured first (default: start pycri)")
    parser.add_argument("--label", default="pycri", help="that runtime's label in the report")
    add_compare_argument(parser)
    parser.add_argument("--registry", help="host:port of a running registry (default: start one)")
    parser.add_argument("--name-prefix", help="registry name the runtime maps to --registry")
    parser.add_argument("--pid", type=int, help="pid of the first runtime, for its peak RSS (default: the socket's)")
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
            targets = [Target(args.label, endpoint, pid or server_pid(endpoint))]
            targets += [Target(label, ep, server_pid(ep)) for label, ep in parse_compare(args.compare)]
            closers += [t.channel.close for t in targets]
            print(f"endpoints {', '.join(f'{t.label} {t.endpoint}' for t in targets)}; registry {registry}, "
                  f"names {prefix}/bench/...")
            pulls = [("busybox cold pull", f"{prefix}/bench/busybox:1", args.busybox_runs, busybox_size),
                     (f"{args.big_mb} MB 5-layer cold pull", f"{prefix}/bench/big:1", args.runs, big_size)]
            for kind, name, runs, _ in pulls:
                for _ in range(runs):
                    for t in targets:
                        t.times.setdefault(kind, []).append(cold_pull(t.images, name))
            for t in targets:
                t.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=f"{prefix}/bench/big:1")),
                                     timeout=60)
            for t in targets:
                print(f"\n{t.label} ({t.endpoint})")
                for kind, _, _, size in pulls:
                    report(kind, t.times[kind], size)
                if args.critest_image:
                    t.lifecycle = lifecycle(t.images, args.critest_image)
                if t.pid:
                    print(f"runtime peak RSS (VmHWM of pid {t.pid}): {peak_rss_mb(t.pid):.1f} MB")
            if len(targets) > 1:
                ratios(targets)
        finally:
            for close in reversed(closers):
                close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
