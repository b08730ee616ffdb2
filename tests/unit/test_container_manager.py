"""The container manager against fakes of the OCI runtime, conmon, the image store and the sandbox manager: the
lifecycle, exits, teardown and reconciliation can be changed and checked without root or a real runtime.

The fake runtime plays conmon's part for exits: a kill writes the exit file conmon would write, which the
manager's watcher picks up as it would in production.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cri.config import Config
from cri.core import events as ev
from cri.core.containers import ContainerManager
from cri.errors import FailedPrecondition, Internal, NotFound
from cri.oci.conmon import Created
from cri.state.container_record import ContainerRequest
from cri.state.container_state import ContainerState
from cri.state.sandbox_record import NamespaceOptions, SandboxRecord
from storage.image_records import ImageRecord

IMAGE = ImageRecord(id="sha256:" + "1" * 64, repo_tags=["example.test/app:1"], cmd=["sh"], env=["PATH=/bin"])


@dataclass
class FakeRuntime:
    """An OCI runtime that keeps its containers in a dict; a kill "exits" the container with 128 + signal."""

    exit_dir: Path
    name: str = "runc"
    path: str = "/fake/runc"
    root: Path = Path("/nonexistent/runtime-root")
    containers: dict[str, str] = field(default_factory=dict)  # id -> status
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def list(self) -> list[dict[str, Any]]:
        return [{"id": cid, "status": status, "pid": 4242} for cid, status in self.containers.items()]

    async def start(self, container_id: str) -> None:
        self.calls.append(("start", container_id))
        self.containers[container_id] = "running"

    async def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        self.calls.append(("kill", container_id))
        if self.containers.get(container_id) in ("created", "running"):  # runc kills a created one's init too
            self.containers[container_id] = "stopped"
            (self.exit_dir / container_id).write_text(str(128 + sig))

    async def delete(self, container_id: str, force: bool = False) -> None:
        self.calls.append(("delete", container_id))
        self.containers.pop(container_id, None)


@dataclass
class FakeConmon:
    """conmon without a process: `runtime create` is recorded in the fake runtime; it may be told to fail."""

    exit_dir: Path
    fail: str = ""
    pid: int = 4242

    def exit_file(self, container_id: str) -> Path:
        return self.exit_dir / container_id

    async def create_container(self, runtime: FakeRuntime, container_id: str, bundle: Path, log_path: str,
                               name: str, **options: Any) -> Created:
        if self.fail:
            raise RuntimeError(self.fail)
        assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["sh"]
        runtime.containers[container_id] = "created"
        return Created(pid=self.pid, conmon_pid=0)


@dataclass
class FakeRootfs:
    path: Path
    volumes: tuple[Path, ...] = ()


class FakeImages:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rootfs: set[str] = set()
        self.remove_failures: list[str] = []  # the next removals fail with these messages

    def status(self, ref: str) -> ImageRecord | None:
        return IMAGE if ref in (IMAGE.id, IMAGE.repo_tags[0]) else None

    async def create_rootfs(self, container_id: str, image_id: str, idmap: object = None,
                            volume_images: object = (), upper_layer: object = None) -> FakeRootfs:
        root = self.base / container_id
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        self.rootfs.add(container_id)
        return FakeRootfs(root)

    async def remove_rootfs(self, container_id: str) -> None:
        if self.remove_failures:
            raise OSError(self.remove_failures.pop(0))
        self.rootfs.discard(container_id)

    async def unmount_rootfs(self, container_id: str) -> None:
        pass

    def rootfs_ids(self) -> list[str]:
        return sorted(self.rootfs)


class FakeSandboxes:
    def __init__(self, base: Path) -> None:
        self.pod = SandboxRecord(id="a" * 64, name="pod", namespace="ns", uid="u1", reserved_name="pod_ns_u1_0",
                                 state="ready", sandbox_dir=str(base / "pod"), cgroup_parent="/pycri-unit-test",
                                 namespace_options=NamespaceOptions(network=2, pid=1, ipc=2))

    def get(self, ref: str) -> SandboxRecord:
        if not ref or not self.pod.id.startswith(ref):
            raise NotFound(f"pod sandbox {ref!r} not found")
        return self.pod

    def find(self, ref: str) -> SandboxRecord | None:
        return self.pod if ref and self.pod.id.startswith(ref) else None

    def list(self) -> list[SandboxRecord]:
        return [self.pod]


@dataclass
class Env:
    config: Config
    runtime: FakeRuntime
    conmon: FakeConmon
    images: FakeImages
    sandboxes: FakeSandboxes
    bus: ev.EventBus

    def manager(self) -> ContainerManager:
        return ContainerManager(self.config, self.sandboxes, self.images, self.bus,
                                conmon=self.conmon, runtimes={"runc": self.runtime})


@pytest.fixture
def env(tmp_path: Path) -> Env:
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state",
                    runtime={"default_runtime": "runc"})  # the fake runtime's handler
    exit_dir = config.state_dir / "exits"
    exit_dir.mkdir(parents=True)
    return Env(config, FakeRuntime(exit_dir), FakeConmon(exit_dir), FakeImages(tmp_path / "rootfs"),
               FakeSandboxes(tmp_path), ev.EventBus())


def request(name: str = "app") -> ContainerRequest:
    return ContainerRequest(sandbox_id="a" * 64, name=name, image=IMAGE.repo_tags[0])


def drain(queue: asyncio.Queue[Any]) -> list[int]:
    kinds = []
    while not queue.empty():
        kinds.append(queue.get_nowait().kind)
    return kinds


def test_lifecycle_create_start_stop_remove(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        events = env.bus.subscribe()
        await manager.start()
        record = await manager.create(request())
        assert record.state is ContainerState.CREATED
        await manager.start_container(record.id)
        assert manager.get(record.id).state is ContainerState.RUNNING
        assert env.runtime.containers[record.id] == "running"

        await manager.stop_container(record.id, 5)
        stopped = manager.get(record.id)
        assert stopped.state is ContainerState.EXITED
        assert stopped.exit_code == 128 + signal.SIGTERM
        assert stopped.reason == "Error"
        assert stopped.started_at <= stopped.finished_at
        await manager.stop_container(record.id, 5)  # idempotent

        await manager.remove_container(record.id)
        assert manager.find(record.id) is None
        assert not (env.config.root / "containers" / f"{record.id}.json").exists()
        assert drain(events) == [ev.CREATED, ev.STARTED, ev.STOPPED, ev.DELETED]
        # the rest is reclaimed in the background; the pod's removal waits for it
        await manager.remove_all_in_sandbox(record.sandbox_id)
        assert not Path(record.bundle).exists()
        assert env.images.rootfs == set()
        assert ("delete", record.id) in env.runtime.calls
        await manager.stop()

    asyncio.run(scenario())


def test_a_failed_runtime_create_ends_as_start_error_and_start_says_why(env: Env) -> None:
    env.conmon.fail = "runc create: no such file"

    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        record = await manager.create(request())
        with pytest.raises(FailedPrecondition, match="could not be created: runc create: no such file"):
            await manager.start_container(record.id)
        failed = manager.get(record.id)
        assert failed.state is ContainerState.EXITED
        assert (failed.exit_code, failed.reason) == (128, "StartError")
        with pytest.raises(FailedPrecondition, match="only a created one can start"):
            await manager.start_container(record.id)
        await manager.remove_container(record.id)
        await manager.stop()

    asyncio.run(scenario())


def test_a_failed_reclaim_is_retried_and_reported_by_the_pods_removal(env: Env) -> None:
    env.images.remove_failures = ["device busy", "device still busy"]

    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        record = await manager.create(request())
        await manager.remove_container(record.id)  # its reclaim fails in the background
        assert manager.find(record.id) is None
        with pytest.raises(Internal, match="device still busy"):
            await manager.remove_all_in_sandbox(record.sandbox_id)
        assert env.images.rootfs == {record.id} and Path(record.bundle).exists()
        await manager.remove_all_in_sandbox(record.sandbox_id)  # the kubelet retries the pod's removal
        assert env.images.rootfs == set() and not Path(record.bundle).exists()
        await manager.stop()

    asyncio.run(scenario())


def test_no_create_in_a_pod_being_stopped(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        record = await manager.create(request("first"))
        await manager.stop_all_in_sandbox(env.sandboxes.pod.id)
        assert manager.get(record.id).state is ContainerState.EXITED
        with pytest.raises(FailedPrecondition, match="is being stopped"):
            await manager.create(request("second"))
        await manager.remove_all_in_sandbox(env.sandboxes.pod.id)
        assert manager.list() == []
        await manager.stop()

    asyncio.run(scenario())


def test_a_restart_finds_a_running_container_gone_from_the_runtime(env: Env) -> None:
    async def scenario() -> str:
        manager = env.manager()
        await manager.start()
        record = await manager.create(request())
        await manager.start_container(record.id)
        await manager.stop()
        return record.id

    container_id = asyncio.run(scenario())
    env.runtime.containers.clear()  # the host rebooted, or someone ran `runc delete`

    async def restart() -> None:
        manager = env.manager()
        await manager.start()
        gone = manager.get(container_id)
        assert gone.state is ContainerState.EXITED
        assert gone.exit_code == 255
        assert "gone when pycri restarted" in gone.message
        await manager.remove_container(container_id)
        await manager.stop()

    asyncio.run(restart())


def test_a_restart_sweeps_a_rootfs_without_a_record(env: Env) -> None:
    env.images.rootfs.add("b" * 64)

    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        assert env.images.rootfs == set()
        await manager.stop()

    asyncio.run(scenario())


def test_the_stop_signal_waits_until_runc_init_has_execd(env: Env, tmp_path: Path) -> None:
    """runc's init is a Go program that catches every signal: a stop signal it gets before it execs the container's
    process (SIGUSR1, SIGWINCH, a real-time one) is lost, and the stop waited out its grace period and killed."""
    init = tmp_path / "runc:[2:INIT]"  # the name runc's init gives itself
    init.symlink_to("/bin/sh")
    proc = subprocess.Popen([str(init), "-c", "sleep 0.5; exec sleep 30"])
    env.conmon.pid = proc.pid
    seen: list[str] = []
    kill = env.runtime.kill

    async def noting_kill(container_id: str, sig: int, all_processes: bool = False) -> None:
        seen.append(Path(f"/proc/{proc.pid}/comm").read_text().strip())
        await kill(container_id, sig, all_processes)

    env.runtime.kill = noting_kill  # type: ignore[method-assign]

    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        record = await manager.create(request())
        await manager.start_container(record.id)
        await manager.stop_container(record.id, 10)
        assert manager.get(record.id).exit_code == 128 + signal.SIGTERM
        await manager.stop()

    try:
        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()
    assert seen == ["sleep"]
