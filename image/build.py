#!/usr/bin/env python3
"""Build the pycri container image from Debian's packages and this tree's wheels: `make image`.

    image/build.py [--output build/pycri-image.tar] [--mirror URL] [--workdir build/image]

1. debootstrap a Debian 12 (bookworm) minbase root with python3 and the host tools pycri drives;
2. build wheels of pycri and its pinned dependencies, and install them into a venv at /opt/pycri inside
   that root (chroot, no index: only those wheels);
3. write the root as the single layer of an OCI image whose entrypoint is /opt/pycri/bin/pycri, packed as
   an OCI layout tarball named docker.io/pycri/pycri:<version>, which `pycri image import`,
   `ctr images import` and the Helm chart's DaemonSet use.

Runs as root (debootstrap and chroot). No registry, no Dockerfile engine: only Debian's archive and PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cri.server.runtime_version import PYCRI_VERSION  # noqa: E402

REPOSITORY = "docker.io/pycri/pycri"
REFERENCE = f"{REPOSITORY}:{PYCRI_VERSION}"
PREFIX = "/opt/pycri"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3-venv for the venv; the rest is what `pycri check` wants on a node, as `make install-host` installs.
PACKAGES = ["python3", "python3-venv", "ca-certificates", "runc", "crun", "conmon", "containernetworking-plugins",
            "catatonit", "iptables", "iproute2", "util-linux", "mount", "kmod"]
PATH = f"{PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Left out of the layer: the runtime mounts these, or they are caches.
EXCLUDED = ("dev/", "proc/", "sys/", "run/", "tmp/", "var/cache/apt/", "var/lib/apt/lists/", "usr/share/doc/",
            "usr/share/man/", "usr/share/locale/", "var/log/")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def image_config(created: str = "1970-01-01T00:00:00Z", diff_ids: list[str] = ()) -> dict:
    """The OCI image config: what runs (the chart's commands name these binaries), on which PATH."""
    return {
        "created": created, "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [f"{PREFIX}/bin/pycri"], "Cmd": ["daemon"], "Env": [f"PATH={PATH}"],
                   "WorkingDir": "/", "StopSignal": "SIGTERM",
                   "Labels": {"org.opencontainers.image.title": "pycri",
                              "org.opencontainers.image.version": PYCRI_VERSION,
                              "org.opencontainers.image.source": "charts/pycri"}},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": "image/build.py: debootstrap + pycri wheels"}],
    }


def run(*argv: str, **kwargs) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kwargs)


def debootstrap(root: Path, mirror: str) -> None:
    if root.exists():
        from hostos.mountinfo import mounts_below

        # A build killed mid-way (here or in debootstrap) can leave /proc or /sys mounted in the old root:
        # deleting through them would reach the host's files.
        left = mounts_below(root.resolve())
        if left:
            raise SystemExit(f"{root} still has mounts from an earlier build: umount {' '.join(left)} first")
        shutil.rmtree(root)
    run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--components=main", SUITE,
        str(root), mirror)


def install_pycri(root: Path, wheels: Path) -> None:
    """Wheels built here, installed by the image's own python3 into a venv: no index is consulted in the root."""
    shutil.rmtree(wheels, ignore_errors=True)  # only this tree's pins: no wheel of an earlier build
    wheels.mkdir(parents=True)
    run(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--wheel-dir", str(wheels),
        str(REPO))
    inside = root / "tmp" / "wheels"
    shutil.copytree(wheels, inside, dirs_exist_ok=True)
    run("mount", "--bind", "/proc", str(root / "proc"))
    try:
        run("chroot", str(root), "python3", "-m", "venv", PREFIX)
        run("chroot", str(root), f"{PREFIX}/bin/pip", "install", "-q", "--no-index", "--no-cache-dir",
            "--disable-pip-version-check", "--find-links", "/tmp/wheels", "pycri")
        run("chroot", str(root), f"{PREFIX}/bin/pycri", "version")
    finally:
        run("umount", str(root / "proc"))
        shutil.rmtree(inside, ignore_errors=True)


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target) -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data) if self.target is not None else len(data)

    def flush(self) -> None:
        pass


def _layer_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = info.name.removeprefix("./")
    if any(name.startswith(prefix) for prefix in EXCLUDED):
        return None
    info.uname = info.gname = ""
    return info


def write_layer(root: Path, blob_dir: Path) -> tuple[str, str, int]:
    """The root as one gzip layer: (diff id, digest, compressed size)."""
    from isal import igzip

    tmp = blob_dir / "layer.tmp"
    with open(tmp, "wb") as raw:
        compressed = _Hashing(raw)
        with igzip.IGzipFile(fileobj=compressed, mode="wb", compresslevel=2, mtime=0) as gz:
            plain = _Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in sorted(os.listdir(root)):  # dev, proc, ... stay as empty mount points
                    tar.add(root / entry, arcname=entry, filter=_layer_filter)
    digest = "sha256:" + compressed.sha.hexdigest()
    tmp.rename(blob_dir / digest.split(":")[1])
    return "sha256:" + plain.sha.hexdigest(), digest, compressed.size


def _blob(blob_dir: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blob_dir / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def write_oci_archive(root: Path, layout: Path, output: Path) -> str:
    """An OCI layout of one image, packed as a tarball; returns the manifest digest."""
    if layout.exists():
        shutil.rmtree(layout)
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    diff_id, layer_digest, layer_size = write_layer(root, blob_dir)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config_digest, config_size = _blob(blob_dir, json.dumps(image_config(created, [diff_id])).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}]}
    manifest_digest, manifest_size = _blob(blob_dir, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"org.opencontainers.image.ref.name": REFERENCE,
                                            "io.containerd.image.name": REFERENCE}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output.with_suffix(".tmp"), "w") as tar:
        for entry in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / entry, arcname=entry)
    output.with_suffix(".tmp").rename(output)
    return manifest_digest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=REPO / "build" / "pycri-image.tar")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "image")
    ap.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian archive (default %(default)s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("image/build.py: run as root (debootstrap and chroot need it)", file=sys.stderr)
        return 1
    root = args.workdir / "rootfs"
    debootstrap(root, args.mirror)
    install_pycri(root, args.workdir / "wheels")
    digest = write_oci_archive(root, args.workdir / "layout", args.output)
    print(f"{args.output}: {REFERENCE} ({digest}), {args.output.stat().st_size / 1e6:.1f} MB")
    print(f"load it with: pycri image import {args.output}   (or: ctr -n k8s.io images import {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
