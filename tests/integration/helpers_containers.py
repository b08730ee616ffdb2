"""Helpers for the container tests: a daemon with a busybox image pulled from a local registry and a pod to put
containers in (start_env; the env and net_env fixtures in conftest.py use it), and CRI call shorthands."""

from __future__ import annotations

import struct
import threading
import time
import uuid
from pathlib import Path

import grpc
from cri.api.v1 import api_pb2

from tests.imagebuild import Entry, build_busybox_image

IMAGE = "example.test/ctr/busybox:1"
EXTRA_APPLETS = ("chmod", "dd", "yes", "seq", "unshare", "swapoff", "mount", "printf")


def keyctl_probe() -> bytes:
    """A 160-byte static x86-64 program: exit 1 when keyctl() fails with EPERM (seccomp), else 0."""
    code = bytes.fromhex(
        "b8fa000000"      # mov eax, 250 (keyctl)
        "bf00000000"      # mov edi, 0 (KEYCTL_GET_KEYRING_ID)
        "befdffffff"      # mov esi, -3 (the session keyring)
        "31d2"            # xor edx, edx
        "0f05"            # syscall
        "31ff"            # xor edi, edi
        "83f8ff"          # cmp eax, -1 (-EPERM)
        "400f94c7"        # sete dil
        "b83c000000"      # mov eax, 60 (exit)
        "0f05")           # syscall
    base, header_size = 0x400000, 64 + 56
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1, base + header_size,
                       64, 0, 0, 64, 56, 1, 0, 0, 0)
    size = header_size + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def image_layers() -> list[list[Entry]]:
    users = [Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nu1:x:1000:1000::/home/u1:/bin/sh\n"
                                      b"nobody:x:65534:65534:nobody:/home:/bin/false\n"),
             Entry("etc/group", data=b"root:x:0:\nu1:x:1000:\nextra:x:50000:u1\nnogroup:x:65534:\n"),
             Entry("home", "dir"), Entry("home/u1", "dir", uid=1000, gid=1000)]
    applets = [Entry(f"bin/{name}", "symlink", linkname="busybox") for name in EXTRA_APPLETS]
    return [users + applets + [Entry("keyctl-probe", data=keyctl_probe(), mode=0o755)]]


def start_env(daemon_factory, registry, tmp_path, settings: dict | None = None, host_network: bool = True):
    """A daemon that has pulled the test image, and a pod; yields (daemon, pod id, pod config), then removes the pod."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nprefix = "example.test"\n'
                    f'location = "{registry.host}"\ninsecure = true\n')
    registry.push("ctr/busybox", "1", build_busybox_image(
        extra_layers=image_layers(), config={"Env": ["FROM_IMAGE=yes", "PATH=/bin"], "Cmd": ["sh"]}))
    d = daemon_factory({"storage": {"registries_conf": str(conf)}, **(settings or {})})
    d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=IMAGE)), timeout=60)
    logs = tmp_path / "logs"
    logs.mkdir()
    config = pod_config(logs, host_network=host_network)
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        yield d, pod, config
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
            d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)

def pod_config(log_dir: Path, name: str = "", host_network: bool = True) -> api_pb2.PodSandboxConfig:
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="ctr-test", uid=f"uid-{name}"),
        hostname="" if host_network else name, log_directory=str(log_dir),  # kubelet sends none with host network
        linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE if host_network else api_pb2.POD))))


def pod_with_handler(d, log_dir: Path, handler: str, name: str = "") -> tuple[str, api_pb2.PodSandboxConfig]:
    """A host-network pod run by the given runtime handler: (pod id, its config)."""
    cfg = pod_config(log_dir, name=name)
    return d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg, runtime_handler=handler),
                                   timeout=60).pod_sandbox_id, cfg


def container_config(name: str, command: list[str], **kwargs) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=IMAGE), command=command,
        log_path=f"{name}.log", **kwargs)


def create(d, pod, pod_cfg, config) -> str:
    return d.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod, config=config, sandbox_config=pod_cfg), timeout=60).container_id


def run(d, pod, pod_cfg, config) -> str:
    cid = create(d, pod, pod_cfg, config)
    d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
    return cid


def status(d, cid, verbose=False) -> api_pb2.ContainerStatusResponse:
    return d.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid, verbose=verbose), timeout=30)


def wait_state(d, cid, state, timeout: float = 30) -> api_pb2.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status(d, cid).status
        if st.state == state or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def exec_sync(d, cid, cmd, timeout=10) -> api_pb2.ExecSyncResponse:
    return d.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout),
                              timeout=timeout + 30)


def log_lines(pod_cfg, name) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of each CRI log line."""
    path = Path(pod_cfg.log_directory) / f"{name}.log"
    out = []
    for line in path.read_text().splitlines():
        _, stream, tag, text = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" "), "")
        out.append((stream, tag, text))
    return out


def wait_log(pod_cfg, name, predicate, timeout: float = 15) -> list[tuple[str, str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = log_lines(pod_cfg, name)
        except FileNotFoundError:
            lines = []
        if predicate(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


class EventCollector:
    """Reads GetContainerEvents in a thread until closed."""

    def __init__(self, d):
        self.call = d.runtime.GetContainerEvents(api_pb2.GetEventsRequest())
        self.call.initial_metadata()  # sent once the daemon has subscribed us: no event is missed from here
        self.events: list[api_pb2.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def kinds_for(self, cid: str) -> list[int]:
        return [e.container_event_type for e in self.events if e.container_id == cid]

    def close(self):
        self.call.cancel()
        self.thread.join(5)
