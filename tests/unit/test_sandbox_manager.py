"""The sandbox manager against a fake host (PodHost) and a fake CNI manager: RunPodSandbox, Stop, Remove, Status,
the undo of a failing step and reconciliation at start can be changed and checked without root.

The fake host keeps what the manager made on it (pinned namespaces, /dev/shm mounts, cgroups, infra processes) in
sets, so that each test can say the host is back as it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from cri.core import events as ev
from cri.core.sandboxes import SandboxManager
from cri.core.sandboxes.host import PodHost
from cri.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from cri.state.sandbox_record import MODE_NODE, MODE_POD, NamespaceOptions, SandboxSpec
from netplugins import NetworkNotReady, PodNetwork

INFRA = (4242, 99, 4241)  # pid, start time, parent pid


class FakeHost(PodHost):
    """The host as sets of what exists; `fail` names a method that raises OSError (EPERM) once called."""

    def __init__(self) -> None:
        super().__init__()
        self.pinned: set[Path] = set()
        self.shm: set[str] = set()
        self.cgroups: set[str] = set()
        self.killed: list[str] = []
        self.infra: set[int] = set()
        self.dead_infra: set[int] = set()
        self.fail = ""
        self.moved: list[tuple[int, str]] = []

    def _maybe_fail(self, what: str) -> None:
        if self.fail == what:
            raise PermissionError(1, f"{what}: Operation not permitted")

    def user_namespaces_problem(self) -> str | None:
        return None

    async def pin_namespaces(self, directory: Path, kinds: list[str], hostname: str | None, sysctls: dict[str, str],
                             uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]],
                             userns: bool) -> None:
        self._maybe_fail("pin_namespaces")
        directory.mkdir(parents=True, exist_ok=True)
        for kind in [*kinds, "user"] if userns else kinds:
            (directory / kind).touch()
            self.pinned.add(directory / kind)

    def unpin_namespace(self, path: Path | str) -> None:
        self.pinned.discard(Path(path))
        Path(path).unlink(missing_ok=True)

    def namespace_alive(self, path: Path | str) -> bool:
        return Path(path) in self.pinned

    def mount_shm(self, target: Path) -> None:
        self._maybe_fail("mount_shm")
        target.mkdir(parents=True, exist_ok=True)
        self.shm.add(str(target))

    def unmount(self, target: Path | str) -> None:
        self.shm.discard(str(target))

    def mounts_below(self, directory: Path | str) -> list[str]:
        return sorted(m for m in self.shm if m.startswith(f"{directory}/"))

    def create_cgroup(self, path: str) -> list[str]:
        self._maybe_fail("create_cgroup")
        self.cgroups.add(path)
        return [f"/fake/cgroup{path}"]

    async def remove_cgroups(self, directories: list[str]) -> None:
        for directory in directories:
            self.cgroups.discard(directory.removeprefix("/fake/cgroup"))

    def cgroup_dirs(self, path: str) -> list[str]:
        return [f"/fake/cgroup{path}"]

    def move_to_cgroup(self, pid: int, path: str) -> None:
        self.moved.append((pid, path))

    def find_cgroups(self, names: set[str]) -> list[str]:
        return [f"/fake/cgroup{c}" for c in sorted(self.cgroups) if c.rsplit("/", 1)[-1] in names]

    def kill_cgroups(self, directories: list[str]) -> None:
        self.killed.extend(directories)

    async def start_infra(self, catatonit: str, namespaces: dict[str, str], cgroup: str, workdir: str,
                          place: Callable[[int], Awaitable[None]]) -> tuple[int, int, int]:
        self._maybe_fail("start_infra")
        await place(INFRA[2])
        self.infra.add(INFRA[0])
        return INFRA

    async def stop_infra(self, pid: int, start_time: int, parent: int) -> None:
        self.infra.discard(pid)

    def infra_running(self, pid: int, start_time: int) -> bool:
        return pid in self.infra and pid not in self.dead_infra


@dataclass
class FakeResult:
    ips: list[str]

    def pod_ips(self) -> list[str]:
        return list(self.ips)


@dataclass
class FakeCNI:
    """A CNI manager whose networks are a dict; `fail_add` makes ADD raise, `ready_message` makes it not ready."""

    attached: dict[str, PodNetwork] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_add: bool = False
    ready_message: str = ""

    def ready(self) -> tuple[bool, str, str]:
        return not self.ready_message, "NetworkPluginNotReady" if self.ready_message else "", self.ready_message

    def reload(self) -> None:
        self.calls.append(("reload", ""))

    async def setup(self, pod: PodNetwork) -> FakeResult:
        self.calls.append(("add", pod.id))
        if self.fail_add:
            raise NetworkNotReady("plugin bridge failed: no IP addresses available")
        self.attached[pod.id] = pod
        return FakeResult(["10.88.0.7"])

    async def teardown(self, pod: PodNetwork) -> None:
        self.calls.append(("del", pod.id))
        self.attached.pop(pod.id, None)

    def cached_pods(self) -> list[PodNetwork]:
        return list(self.attached.values())


@dataclass
class Env:
    base: Path
    host: FakeHost = field(default_factory=FakeHost)
    cni: FakeCNI = field(default_factory=FakeCNI)
    bus: ev.EventBus = field(default_factory=ev.EventBus)
    hooks: list[tuple[str, str]] = field(default_factory=list)

    def manager(self) -> SandboxManager:
        manager = SandboxManager(self.base / "root", self.base / "state", self.cni,
                                 runtime_handlers=["runc"], default_runtime="runc", events=self.bus,
                                 host=self.host, host_resolv_conf=self.base / "resolv.conf",
                                 host_hosts=self.base / "hosts", runtime_path=lambda handler: "/fake/runc")

        async def stop_all(sandbox_id: str) -> None:
            self.hooks.append(("stop", sandbox_id))

        async def remove_all(sandbox_id: str) -> None:
            self.hooks.append(("remove", sandbox_id))

        manager.set_container_hooks(stop_all, remove_all)
        return manager

    def host_is_clean(self) -> bool:
        return not (self.host.pinned or self.host.shm or self.host.cgroups or self.host.infra or self.cni.attached)

    def sandbox_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.base / "state" / "sandboxes").iterdir())


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    return Env(tmp_path)


def spec(name: str = "web", **kw: Any) -> SandboxSpec:
    return SandboxSpec(name=name, namespace="ns", uid=f"uid-{name}", **kw)


def drain(queue: asyncio.Queue[Any]) -> list[int]:
    kinds = []
    while not queue.empty():
        kinds.append(queue.get_nowait().kind)
    return kinds


def test_run_status_stop_remove_leave_the_host_as_it_was(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        events = env.bus.subscribe()
        await manager.start()
        record = await manager.run_pod(spec(namespace_options=NamespaceOptions(pid=MODE_POD)))
        assert record.state == "ready" and record.ips == ["10.88.0.7"] and record.network_ready
        assert record.hostname == record.id[:12]
        sandbox_dir = Path(record.sandbox_dir)
        assert {p.name for p in env.host.pinned} == {"net", "ipc", "uts"}
        assert env.host.shm == {record.shm_path} and env.host.cgroups == {record.cgroup_path}
        assert record.cgroup_path == f"/pycri/pycri-{record.id}"
        assert (record.infra_pid, record.infra_start_time, record.infra_parent_pid) == INFRA
        assert env.host.moved == [(INFRA[2], record.cgroup_path)]  # cgroupfs: the infra's parent enters the cgroup
        assert (sandbox_dir / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"
        assert record.id[:12] in (sandbox_dir / "hosts").read_text()
        assert (sandbox_dir / "hostname").read_text() == record.id[:12] + "\n"

        status = manager.status(record.id[:10])
        assert status.record.id == record.id and status.info["networkReady"] is True
        assert status.info["cgroupPath"] == record.cgroup_path and status.info["pid"] == INFRA[0]
        assert [r.id for r in manager.list(state="ready")] == [record.id]

        await manager.stop_pod(record.id)
        stopped = manager.get(record.id)
        assert stopped.state == "notready" and not stopped.network_ready and stopped.infra_pid == 0
        assert env.host.infra == set() and env.cni.attached == {}
        await manager.stop_pod(record.id)  # idempotent
        assert env.cni.calls.count(("del", record.id)) == 1

        await manager.remove_pod(record.id)
        with pytest.raises(NotFound):
            manager.get(record.id)
        await manager.remove_pod(record.id)  # idempotent
        assert env.host_is_clean() and not sandbox_dir.exists()
        assert not (env.base / "root" / "sandboxes" / f"{record.id}.json").exists()
        assert env.hooks == [("stop", record.id), ("stop", record.id), ("remove", record.id)]
        assert drain(events) == [ev.CREATED, ev.STARTED, ev.STOPPED, ev.DELETED]
        again = await manager.run_pod(spec())  # the name is free again
        assert again.id != record.id

    asyncio.run(scenario())


@pytest.mark.parametrize("failing", ["pin_namespaces", "mount_shm", "create_cgroup", "start_infra", "cni"])
def test_a_failing_step_undoes_every_earlier_one_and_names_itself(env: Env, failing: str) -> None:
    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        if failing == "cni":
            env.cni.fail_add = True
        else:
            env.host.fail = failing
        with pytest.raises((Internal, NetworkNotReady)) as caught:
            await manager.run_pod(spec(namespace_options=NamespaceOptions(pid=MODE_POD)))
        step = {"pin_namespaces": "creating the pod's namespaces", "mount_shm": "mounting the pod's /dev/shm",
                "create_cgroup": "creating the pod cgroup", "start_infra": "starting the infra process",
                "cni": "setting up the pod network (CNI ADD)"}[failing]
        assert str(caught.value).startswith(step + ": "), str(caught.value)
        assert manager.list() == []
        assert env.host_is_clean(), (env.host.pinned, env.host.shm, env.host.cgroups, env.host.infra)
        assert env.sandbox_dirs() == [] and list((env.base / "root" / "sandboxes").iterdir()) == []
        env.host.fail, env.cni.fail_add = "", False
        assert (await manager.run_pod(spec(namespace_options=NamespaceOptions(pid=MODE_POD)))).state == "ready"

    asyncio.run(scenario())


def test_requests_refused_before_anything_is_made(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        with pytest.raises(InvalidArgument, match="runtime handler 'kata' is not configured"):
            await manager.run_pod(spec(runtime_handler="kata"))
        with pytest.raises(InvalidArgument, match="hostname 'h' cannot be set"):
            await manager.run_pod(spec(hostname="h", namespace_options=NamespaceOptions(network=MODE_NODE)))
        env.cni.ready_message = "no CNI configuration file in /etc/cni/net.d"
        with pytest.raises(NetworkNotReady, match="no CNI configuration"):
            await manager.run_pod(spec())
        assert ("reload", "") in env.cni.calls  # a not-ready network is looked for again first
        assert env.host_is_clean() and env.sandbox_dirs() == []

    asyncio.run(scenario())


def test_a_host_network_pod_uses_no_cni_and_copies_the_hosts_file(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        await manager.start()
        record = await manager.run_pod(spec(namespace_options=NamespaceOptions(network=MODE_NODE)))
        assert env.cni.calls == [] and record.netns_path == "" and record.uts_path == ""
        assert {p.name for p in env.host.pinned} == {"ipc"}
        assert Path(record.hosts_path).read_text() == "127.0.0.1 localhost\n"
        await manager.remove_pod(record.id)
        assert env.host_is_clean()

    asyncio.run(scenario())


def test_a_dead_infra_makes_the_pod_notready_once(env: Env) -> None:
    async def scenario() -> None:
        manager = env.manager()
        events = env.bus.subscribe()
        await manager.start()
        record = await manager.run_pod(spec(namespace_options=NamespaceOptions(pid=MODE_POD)))
        env.host.dead_infra.add(INFRA[0])
        assert manager.current(record.id).state == "notready"
        assert manager.list(state="ready") == []
        assert drain(events) == [ev.CREATED, ev.STARTED, ev.STOPPED]
        with pytest.raises(FailedPrecondition, match="not ready"):
            await manager.open_port(record.id, 80)

    asyncio.run(scenario())


def test_reconciliation_at_start(env: Env) -> None:
    """A restart keeps a ready pod, marks one whose namespace died NotReady, undoes one a crash left creating, and
    sweeps a sandbox directory and a cached network that have no record."""
    async def scenario() -> None:
        first = env.manager()
        await first.start()
        kept = await first.run_pod(spec("kept"))
        died = await first.run_pod(spec("died"))
        half = await first.run_pod(spec("half"))
        env.host.unpin_namespace(died.netns_path)
        record_file = env.base / "root" / "sandboxes" / f"{half.id}.json"
        record_file.write_text(record_file.read_text().replace('"state":"ready"', '"state":"creating"'))
        orphan = "f" * 64
        (env.base / "state" / "sandboxes" / orphan).mkdir()
        env.cni.attached[orphan] = PodNetwork(id=orphan, name="o", namespace="ns", uid="u", netns="")

        second = env.manager()
        released: list[tuple[str, list[str]]] = []  # (scope, cgroups killed by then)
        release = second._t.cgroups.release

        async def recorded_release(path: str) -> None:
            released.append((path, list(env.host.killed)))
            await release(path)

        second._t.cgroups.release = recorded_release  # type: ignore[method-assign]
        await second.start()
        assert {r.id: r.state for r in second.list()} == {kept.id: "ready", died.id: "notready"}
        # what a crash left in the half-created sandbox's own cgroup is killed before systemd is asked to stop its
        # scope (an infra not yet exec'd ignores systemd's SIGTERM as its PID namespace's init)
        assert (half.cgroup_path, [f"/fake/cgroup{half.cgroup_path}"]) in released
        assert half.id not in env.cni.attached and orphan not in env.cni.attached
        assert sorted(env.sandbox_dirs()) == sorted([kept.id, died.id])
        assert not any(str(p).startswith(half.sandbox_dir) for p in env.host.pinned)
        await second.remove_pod(kept.id)
        await second.remove_pod(died.id)
        assert env.host_is_clean()

    asyncio.run(scenario())
