"""Build and cache the node VM's disk: Debian 12 from Debian's archive, with the kernel outside it.

The cache key is a hash of the package list and of what builds the image, so changing either builds
a new image; older ones are deleted once the new one is complete. The build runs debootstrap twice:
first only downloading (`--make-tarball`, the one step that needs the network), then installing
from that tarball in new mount, network, UTS, IPC and PID namespaces, so that nothing a maintainer
script does (mounting /proc, starting a daemon) reaches the host. The root filesystem becomes an
ext4 image with `mkfs.ext4 -d` (no loop device, no mount on the host).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.nodevm import CACHE

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DISK_SIZE = "8G"
# Each build step fails naming itself past these (measured: 1-2 min, 2-8 min and 20-60 s; the slow
# ends at a load of 10), so that a hang does not eat CI's time.
DOWNLOAD_TIMEOUT_S, INSTALL_TIMEOUT_S, MKFS_TIMEOUT_S = 600, 1200, 300
# What a production node has (kernel, systemd, D-Bus, AppArmor) plus what the Makefile's
# HOST_PACKAGES installs on a build machine (a unit test keeps this a superset), plus jq for the
# critest kit's scripts, sudo (critest's AppArmor specs run `sudo apparmor_parser`) and criu for
# checkpoints.
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "udev", "dbus", "apparmor", "procps", "jq", "sudo", "criu",
    "python3", "python3-venv",
    "runc", "crun", "conmon", "containernetworking-plugins", "iptables", "catatonit", "util-linux",
    "busybox-static", "docker-registry", "openssl", "apache2-utils", "curl", "iproute2", "kmod",
)
# Units a test node does not need; each costs seconds of emulated CPU at boot. docker-registry is
# started by the guest agent on 127.0.0.1 only (Debian's unit would listen on every interface).
MASKED_UNITS = (
    "docker-registry.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "dpkg-db-backup.timer",
    "getty@tty1.service", "serial-getty@ttyS0.service", "systemd-timesyncd.service",
)
MOUNT_DIR = "/mnt/nodevm"  # shares are mounted below it, one directory per 9p mount tag
# The agent is not baked in: it is copied into the job share for each run, so editing it needs no
# rebuild. The unit powers the VM off whatever the agent's exit status.
AGENT_UNIT = f"""\
[Unit]
Description=pycri node VM job (the command the host asked for)
After=basic.target dbus.service systemd-modules-load.service
RequiresMountsFor={MOUNT_DIR}/job
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=exec
ExecStart=/usr/bin/python3 {MOUNT_DIR}/job/guest.py
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""
FSTAB = f"""\
/dev/vda / ext4 rw,errors=remount-ro 0 1
job {MOUNT_DIR}/job 9p trans=virtio,version=9p2000.L,msize=262144,access=any 0 0
"""


class BuildError(RuntimeError):
    """A build step failed; the message names it and carries its stderr."""


@dataclass(frozen=True)
class Image:
    """A complete cached image: the disk and the kernel and initrd that boot it."""

    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def packages(self) -> Path:
        """`dpkg-query -W` of the image: name and version per line, for the docs' host facts."""
        return self.dir / "packages.txt"

    def complete(self) -> bool:
        return (self.dir / "COMPLETE").is_file()


def cache_key(packages: tuple[str, ...] = PACKAGES) -> str:
    """A hash of what makes the image: the package list, the node's configuration and the build's
    code; not the steps' time limits, so tuning those keeps the cached image."""
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(packages)).encode())
    for part in (SUITE, MIRROR, DISK_SIZE, MOUNT_DIR, AGENT_UNIT, FSTAB, *MASKED_UNITS):
        digest.update(part.encode() + b"\0")
    for func in (customize, _boot_files, build):
        digest.update(inspect.getsource(func).encode())
    return digest.hexdigest()[:16]


def image_for(packages: tuple[str, ...] = PACKAGES, cache: Path = CACHE) -> Image:
    return Image(cache / f"image-{cache_key(packages)}")


def run_step(name: str, args: list[str], timeout: float, log: Path) -> None:
    """Run one build step with its output appended to the build log; raise naming the step."""
    with open(log, "ab") as out:
        out.write(f"\n### {name}: {' '.join(args)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{name} did not finish within {timeout:.0f} s; see {log}") from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"{name} failed with exit status {proc.returncode}; see {log}:\n{tail}")


def customize(rootfs: Path) -> None:
    """The node's configuration, written straight into the tree (no chroot needed)."""
    etc = rootfs / "etc"
    (etc / "hostname").write_text("pycri-node\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 pycri-node\n::1 localhost\n")
    (etc / "fstab").write_text(FSTAB)
    (rootfs / MOUNT_DIR.lstrip("/") / "job").mkdir(parents=True, exist_ok=True)
    (etc / "modules-load.d" / "nodevm.conf").write_text("9p\n9pnet_virtio\noverlay\nbr_netfilter\n")
    journald = etc / "systemd" / "journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "nodevm.conf").write_text("[Journal]\nStorage=volatile\n")
    units = etc / "systemd" / "system"
    (units / "pycri-nodevm-job.service").write_text(AGENT_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    _symlink(wants / "pycri-nodevm-job.service", "/etc/systemd/system/pycri-nodevm-job.service")
    for unit in MASKED_UNITS:
        for enabled in units.glob(f"*.wants/{unit}"):
            enabled.unlink()
        _symlink(units / unit, "/dev/null")
    # No password, no login: the only way in is the job share.
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _boot_files(rootfs: Path, image_dir: Path) -> None:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError(f"no kernel or initrd in {rootfs / 'boot'} (linux-image-amd64 not installed?)")
    shutil.copyfile(kernels[-1], image_dir / "vmlinuz")
    shutil.copyfile(initrds[-1], image_dir / "initrd.img")


def build(packages: tuple[str, ...] = PACKAGES, cache: Path = CACHE, log=print) -> Image:
    """Return the cached image for `packages`, building it first when it is missing."""
    image = image_for(packages, cache)
    if image.complete():
        return image
    for tool in ("debootstrap", "unshare", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is missing: apt-get install debootstrap util-linux e2fsprogs")
    started = time.monotonic()
    work = cache / f"build-{image.dir.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build_log = work / "build.log"
    log(f"nodevm: building the node image {image.dir.name} (log {build_log})")
    include = "--include=" + ",".join(packages)
    tarball = work / "debs.tgz"
    run_step("download", ["debootstrap", "--variant=minbase", include, f"--make-tarball={tarball}",
                          SUITE, str(work / "download"), MIRROR], DOWNLOAD_TIMEOUT_S, build_log)
    rootfs = work / "rootfs"
    isolate = ["unshare", "--mount", "--net", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
               "--propagation", "private"]
    run_step("install", [*isolate, "debootstrap", "--variant=minbase", include,
                         f"--unpack-tarball={tarball}", SUITE, str(rootfs), MIRROR], INSTALL_TIMEOUT_S, build_log)
    customize(rootfs)
    staging = work / "image"
    staging.mkdir()
    _boot_files(rootfs, staging)
    with open(staging / "packages.txt", "w") as out:
        subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W"], stdout=out, check=True, timeout=60)
    run_step("mkfs", ["mkfs.ext4", "-q", "-F", "-L", "pycri-node", "-d", str(rootfs),
                      str(staging / "disk.raw"), DISK_SIZE], MKFS_TIMEOUT_S, build_log)
    (staging / "COMPLETE").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    shutil.rmtree(image.dir, ignore_errors=True)
    os.rename(staging, image.dir)
    shutil.rmtree(work, ignore_errors=True)
    # The newest other image stays: worktrees on the previous package list keep theirs.
    for old in sorted(cache.glob("image-*"), key=lambda d: d.stat().st_mtime, reverse=True)[2:]:
        shutil.rmtree(old, ignore_errors=True)
    log(f"nodevm: image built in {time.monotonic() - started:.0f} s")
    return image
