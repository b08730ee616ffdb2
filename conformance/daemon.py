"""Start and stop the real pycri daemon for tests and benchmarks, in a temporary root."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cri.api.v1 import api_pb2_grpc

from conformance.client import Client
from cri.config import render_toml

REPO = Path(__file__).resolve().parent.parent  # the source tree, or site-packages when installed
# Multiplies the start and stop waits: the node VM (qemu without KVM, conformance/nodevm) runs
# everything many times slower than the host, and its agent sets this. Not PYCRI_*: the daemon
# reads those as configuration and refuses unknown keys.
TIME_SCALE = float(os.environ.get("NODEVM_TIME_SCALE") or 1)


def _unmount_below(path: Path) -> list[str]:
    """Unmount anything still mounted below `path` (deepest first); return what was found."""
    found = []
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    for target in sorted(found, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    return found


def _kill_processes_mentioning(path: Path) -> list[int]:
    """Kill leftover conmon/runtime/infra processes whose command line names our temp dir."""
    killed = []
    base = str(path).rstrip("/").encode()
    # Whole path components only: /tmp/pycri-t1 must not match /tmp/pycri-t12 or another session's dir.
    pattern = re.compile(re.escape(base) + rb"(?=/|\x00|$|[=:,])")
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            if pattern.search((pid_dir / "cmdline").read_bytes()):
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(int(pid_dir.name))
        except (OSError, ProcessLookupError):
            pass
    return killed


class Daemon:
    """One pycri daemon process with its own root, state dir, socket and configuration."""

    def __init__(self, settings: dict | None = None, base: Path | None = None):
        self.base = Path(base or tempfile.mkdtemp(prefix="pycri-t", dir="/tmp"))
        # Traversable like /run and /var/lib: a pod user namespace's root must reach the sandbox dir below.
        os.chmod(self.base, 0o711)
        self.root = self.base / "root"
        self.state_dir = self.base / "state"
        self.socket = self.base / "cri.sock"
        self.log_path = self.base / "daemon.log"
        self.config_path = self.base / "pycri.conf"
        empty_cni = self.base / "cni-empty"
        empty_cni.mkdir(exist_ok=True)
        registries = self.base / "registries.conf"
        if not registries.exists():
            registries.write_text('unqualified-search-registries = []\n')
        defaults = {
            "root": str(self.root),
            "state_dir": str(self.state_dir),
            "listen": f"unix://{self.socket}",
            "log_level": "debug",
            "storage": {"registries_conf": str(registries), "registries_conf_dir": str(self.base / "registries.d")},
            "network": {"cni_conf_dir": str(empty_cni)},
            # Off unless a test asks (with a free port): daemons running side by side cannot all have 9090.
            "metrics": {"enable": False},
        }
        for key, value in (settings or {}).items():
            if isinstance(value, dict):
                defaults.setdefault(key, {}).update(value)
            else:
                defaults[key] = value
        self.settings = defaults
        self.config_path.write_text(render_toml(defaults))
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.runtime: api_pb2_grpc.RuntimeServiceStub | None = None
        self.images: api_pb2_grpc.ImageServiceStub | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cri", "daemon", "--config", str(self.config_path)]

    def _socket_identity(self) -> tuple[int, int] | None:
        try:
            st = self.socket.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_ctime_ns

    def start(self, timeout: float = 20.0, env: dict | None = None) -> "Daemon":
        # A killed daemon leaves its socket: taken for the new one's, the channel would meet a refused connection
        # and wait out grpc's reconnect backoff (1 s, then 1.6 times longer each time) for the new daemon.
        stale = self._socket_identity()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        log.close()
        timeout *= TIME_SCALE
        deadline = time.monotonic() + timeout
        while (identity := self._socket_identity()) is None or identity == stale:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pycri exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pycri did not create {self.socket} in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        return self

    def default_runtime(self) -> str:
        """The handler pods without a RuntimeClass get: the configuration's, or what pycri picks on this host."""
        from cri.config import load_config
        return load_config(self.config_path, environ={}).runtime.default_runtime

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path. The client channel is closed while the daemon shuts down
        (closing it takes grpc 0.2 s)."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_channel()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        self._close_channel()
        try:
            return self.proc.wait(timeout * TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash path. Containers and conmon keep running, as on a real node."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, **kwargs) -> "Daemon":
        self.stop()
        return self.start(**kwargs)

    def client(self) -> Client:
        return Client(f"unix://{self.socket}")

    def remove_everything(self) -> None:
        """Through CRI, as kubelet would: stop and remove every container and pod."""
        client = self.client()
        try:
            client.remove_everything()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        finally:
            client.close()

    def cleanup(self) -> list[str]:
        """Tear down whatever is left; return a description of leaks found (empty when clean)."""
        leaks = []
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.remove_everything()
        finally:
            self.stop()
            killed = _kill_processes_mentioning(self.base)
            if killed:
                leaks.append(f"processes left running: {killed}")
            mounts = _unmount_below(self.base)
            if mounts:
                leaks.append(f"mounts left: {mounts}")
            shutil.rmtree(self.base, ignore_errors=True)
        return leaks
