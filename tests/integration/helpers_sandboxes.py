"""Helpers for the sandbox and CNI integration tests: a private bridge network and leak checks."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

from cri.api.v1 import api_pb2

from hostos import cgroups
from hostos.cgroups.driver import driver

_counter = itertools.count(1)
# Subnet numbers in use by live test processes (several pytest runs may share a host or the node VM): one
# file per number, made with O_EXCL, naming its owner's pid; a dead owner's number is taken back.
SUBNET_CLAIMS = Path("/run/pycri-test-subnets")


def _claim_subnet_index() -> int:
    SUBNET_CLAIMS.mkdir(parents=True, exist_ok=True)
    start = os.getpid() % 200
    for k in range(200):
        index = (start + k) % 200 + 10
        claim = SUBNET_CLAIMS / str(index)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = int(claim.read_text() or 0)
                os.kill(owner, 0)
            except (OSError, ValueError):  # its owner is gone (or the file is being written: try the next)
                claim.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return index
    raise RuntimeError(f"no free test subnet number in {SUBNET_CLAIMS}")


class PrivateNetwork:
    """A bridge network of our own (unique bridge name, 10.123.N.0/24 with N claimed across processes, host-local
    data in a temp dir)."""

    def __init__(self, base: Path, with_portmap: bool = True, ip_masq: bool = False) -> None:
        n = next(_counter)
        self.index = _claim_subnet_index()
        self.name = f"pycri-test-{os.getpid()}-{n}"
        self.bridge = f"pct{os.getpid() % 100000}n{n}"[:15]
        self.subnet = f"10.123.{self.index}.0/24"
        self.conf_dir = base / "cni-conf"
        self.ipam_dir = base / "cni-ipam"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        plugins = [{"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": ip_masq,
                    "hairpinMode": True,
                    "ipam": {"type": "host-local", "dataDir": str(self.ipam_dir),
                             "ranges": [[{"subnet": self.subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}}]
        if with_portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        self.conflist = {"cniVersion": "1.0.0", "name": self.name, "plugins": plugins}

    def install(self, file_name: str = "10-test.conflist") -> None:
        (self.conf_dir / file_name).write_text(json.dumps(self.conflist))

    def leases(self) -> list[str]:
        d = self.ipam_dir / self.name
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []

    def cleanup(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        (SUBNET_CLAIMS / str(self.index)).unlink(missing_ok=True)


@contextlib.contextmanager
def installed_network(base: Path, **options):
    """A PrivateNetwork (options as its constructor takes them) installed for a daemon; its bridge is deleted after."""
    net = PrivateNetwork(base, **options)
    net.install()
    try:
        yield net
    finally:
        net.cleanup()

def veths_on(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


def iptables_rules_mentioning(text: str) -> list[str]:
    rules = []
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        rules += [line for line in out.splitlines() if text in line]
    return rules


def mounts_below(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def cgroup_exists(cgroup_path: str) -> list[str]:
    """The directories of a cgroup path that exist, in every hierarchy (v1, hybrid or pure v2)."""
    return [str(p) for p in cgroups.cgroup_dirs(cgroup_path) if p.exists()]


@contextlib.contextmanager
def own_cgroup_parent(prefix: str = "pycritest"):
    """A pod cgroup parent of the test's own, as kubelet gives each pod: a slice under the systemd driver (named by
    its cgroup path, as critest does), a directory under cgroupfs; removed after (remove the pods first)."""
    name = f"{prefix}{os.urandom(6).hex()}"
    if driver(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs")).name == "systemd":
        try:
            yield f"/{name}.slice"
        finally:
            subprocess.run(["systemctl", "stop", f"{name}.slice"], capture_output=True, timeout=60)
            subprocess.run(["systemctl", "revert", f"{name}.slice"], capture_output=True, timeout=60)
    else:
        try:
            yield f"/{name}"
        finally:
            cgroups.remove(f"/{name}")


def pod_cgroup_path(sandbox_id: str) -> str:
    """Where a pod without a cgroup_parent gets its cgroup under the driver the test daemons use."""
    manager = driver(os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs"))
    return manager.child(manager.parent(""), f"pycri-{sandbox_id}")


def process_gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie (a PID 1 that never reaps keeps those)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # (ESRCH: it was reaped between the open and the read)
        return True


def wait_until(predicate, what: str, timeout: float = 10) -> None:
    """Poll predicate every 5 ms; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def pod_config(name: str, **kwargs) -> api_pb2.PodSandboxConfig:
    """A pod config with unique metadata; kwargs set top-level fields. Like kubelet, no hostname with host network."""
    host_network = kwargs.get("linux", api_pb2.LinuxPodSandboxConfig()).security_context.namespace_options.network
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="test-ns", uid=f"uid-{name}", attempt=0),
        hostname=kwargs.pop("hostname", "" if host_network == api_pb2.NODE else name), **kwargs)
    return config


def in_netns(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout)


def remove_all_pods(d) -> None:
    """Stop and remove every pod through CRI (a failed test leaves its pods to this)."""
    if d.proc is None or d.proc.poll() is not None:
        return
    for pod in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
        d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
