"""The real daemon under kubelet-like concurrent load: many pods and containers at once, racing duplicates,
repeated removes and status polling during churn. Every test asserts outcomes and, at the end, that the host
is as it was (conformance/hostcheck.py), never how fast anything went (bench/concurrency.py does that)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from conformance.daemon import TIME_SCALE
from conformance.hostcheck import leaks, snapshot
from tests.imagebuild import build_busybox_image
from tests.integration.fake_registry import FakeRegistry
from tests.integration.helpers_sandboxes import PrivateNetwork, own_cgroup_parent

pytestmark = pytest.mark.integration

PODS = 10
IMAGE = "conc.test/busybox:1"


@pytest.fixture
def fake():
    server = FakeRegistry()
    yield server
    server.close()


@pytest.fixture
def net(tmp_path):
    """A private bridge network; set up before the daemon so that it is deleted after the daemon's cleanup."""
    network = PrivateNetwork(tmp_path)
    network.install()
    yield network
    network.cleanup()


@pytest.fixture
def cgroup_parent():
    """The pods' cgroup parent, kubelet's to make and remove (the daemon leaves it): a directory under the cgroupfs
    driver, a slice under systemd's (TEST_CGROUP_MANAGER; the node VM); removed after the daemon."""
    with own_cgroup_parent("pycriconc") as parent:
        yield parent


@pytest.fixture
def world(net, cgroup_parent, daemon_factory, fake, tmp_path):
    """A daemon on a private bridge network that pulls IMAGE from a counting registry."""
    fake.serve("busybox", "1", build_busybox_image())
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nprefix = "conc.test"\n'
                    f'location = "{fake.host}"\ninsecure = true\n')
    d = daemon_factory({"storage": {"registries_conf": str(conf)}, "network": {"cni_conf_dir": str(net.conf_dir)}})
    return World(d, net, cgroup_parent, tmp_path, fake)


class World:
    """The daemon, its network, and kubelet-like request builders whose pods share one cgroup parent of ours."""

    def __init__(self, daemon, net: PrivateNetwork, cgroup_parent: str, tmp_path: Path, registry: FakeRegistry):
        self.d, self.net, self.cgroup_parent, self.tmp, self.registry = daemon, net, cgroup_parent, tmp_path, registry

    def host_state(self) -> dict[str, set[str]]:
        """What the daemon can leave behind: its mounts and processes, veths on our bridge, NAT rules for our
        network, cgroups below our parent (the parent itself is kubelet's), and its records and bundles."""
        return snapshot(watch_dirs=[self.d.root / "sandboxes", self.d.root / "containers", self.d.state_dir],
                        cgroup_marker=self.cgroup_parent + "/", iptables_marker=self.net.name,
                        scope=str(self.d.base), bridge=self.net.bridge)

    def nothing_left(self, before: dict[str, set[str]]) -> None:
        """Nothing the daemon made is left. A removed container's bundle is renamed `.removed-<id>` and deleted
        by one background thread after the reply (a removal answers without waiting for the unlinks), so those
        alone may take a while to go; every other leftover fails at once."""
        deadline = time.monotonic() + 30 * TIME_SCALE
        left = leaks(before, self.host_state())
        while left and time.monotonic() < deadline and all(
                kind.startswith("files in") and all("/.removed-" in path for path in paths)
                for kind, paths in left.items()):
            time.sleep(0.1)
            left = leaks(before, self.host_state())
        assert left == {}

    def pod(self, name: str) -> api_pb2.PodSandboxConfig:
        logs = self.tmp / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="conc", uid=f"uid-{name}"),
            hostname=name, log_directory=str(logs),
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent))

    @staticmethod
    def container(name: str) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=IMAGE),
            command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'], log_path=f"{name}.log")

    def pull(self) -> str:
        return self.d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=IMAGE)),
                                       timeout=60).image_ref

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        return self.d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id

    def create(self, pod_id: str, pod: api_pb2.PodSandboxConfig, config: api_pb2.ContainerConfig) -> str:
        return self.d.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=60).container_id

    def start(self, cid: str) -> None:
        self.d.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)

    def stop(self, cid: str, grace: int) -> None:
        self.d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=grace), timeout=60)

    def stop_pod(self, pod_id: str) -> None:
        self.d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def remove_pod(self, pod_id: str) -> None:
        self.d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def pods(self) -> list[api_pb2.PodSandbox]:
        return list(self.d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items)

    def containers(self) -> list[api_pb2.Container]:
        return list(self.d.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers)

    def container_status(self, cid: str) -> api_pb2.ContainerStatus:
        return self.d.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), timeout=30).status

    def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        return self.d.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                               timeout=30).status


def outcome(fn, *args) -> tuple[str, object]:
    """("ok", result) or (status code name, details): for calls racing on purpose, where a failure is an answer."""
    try:
        return "ok", fn(*args)
    except grpc.RpcError as e:
        return e.code().name, e.details()


def all_at_once(fns: list) -> list:
    """Call every function at the same moment, each in its own thread; results in order (errors re-raised)."""
    barrier = threading.Barrier(len(fns))

    def go(fn):
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        return list(pool.map(go, fns))


class Poller:
    """What kubelet's PLEG and status manager do while pods churn: list everything and ask for the status and
    stats of each, over and over. NOT_FOUND for an object removed between the list and the status is an
    answer; any other error is kept to fail the test."""

    def __init__(self, w: World):
        self.w = w
        self.rounds = 0
        self.errors: list[str] = []
        self.seen_containers: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _call(self, what: str, fn, *args, not_found_ok: bool = False):
        try:
            return fn(*args)
        except grpc.RpcError as e:
            if not (not_found_ok and e.code() == grpc.StatusCode.NOT_FOUND):
                self.errors.append(f"{what}: {e.code().name}: {e.details()}")
            return None

    def _loop(self) -> None:
        rt = self.w.d.runtime
        while not self._stop.is_set():
            pods = self._call("ListPodSandbox", self.w.pods) or []
            containers = self._call("ListContainers", self.w.containers) or []
            self._call("ListContainerStats", rt.ListContainerStats, api_pb2.ListContainerStatsRequest(), 30)
            self._call("ListPodSandboxStats", rt.ListPodSandboxStats, api_pb2.ListPodSandboxStatsRequest(), 30)
            for p in pods:
                self._call(f"PodSandboxStatus {p.id[:12]}", self.w.pod_status, p.id, not_found_ok=True)
            for c in containers:
                self.seen_containers.add(c.id)
                self._call(f"ContainerStatus {c.id[:12]}", self.w.container_status, c.id, not_found_ok=True)
            self.rounds += 1


def test_ten_pods_of_two_containers_run_stop_and_go_away_concurrently(world):
    w = world
    w.pull()
    before = w.host_state()
    configs = [w.pod(f"p{i}") for i in range(PODS)]
    with Poller(w) as poller:
        pod_ids = all_at_once([lambda c=c: w.run_pod(c) for c in configs])
        assert len(set(pod_ids)) == PODS

        def two_containers(pod_id: str, pod: api_pb2.PodSandboxConfig) -> list[str]:
            cids = all_at_once([lambda n=n: w.create(pod_id, pod, w.container(n)) for n in ("app", "sidecar")])
            all_at_once([lambda c=c: w.start(c) for c in cids])
            return cids

        cids_by_pod = all_at_once([lambda p=p, c=c: two_containers(p, c) for p, c in zip(pod_ids, configs, strict=True)])

        statuses = {p: w.pod_status(p) for p in pod_ids}
        assert all(s.state == api_pb2.SANDBOX_READY for s in statuses.values())
        ips = [s.network.ip for s in statuses.values()]
        assert all(ips) and len(set(ips)) == PODS, f"each pod has its own address: {ips}"
        assert len(w.net.leases()) == PODS
        listed = w.containers()
        assert len(listed) == 2 * PODS
        for pod_id, cids in zip(pod_ids, cids_by_pod, strict=True):
            mine = sorted((c.metadata.name, c.id) for c in listed if c.pod_sandbox_id == pod_id)
            assert [name for name, _ in mine] == ["app", "sidecar"]
            assert {cid for _, cid in mine} == set(cids)
        assert all(c.state == api_pb2.CONTAINER_RUNNING for c in listed)
        running = leaks(before, w.host_state())
        assert {"mounts", "processes", "veth", "cgroups"} <= running.keys(), "the leak check sees what pods hold"

        # As kubelet kills pods: every container with its grace period, then every sandbox.
        all_at_once([lambda c=c: w.stop(c.id, 10) for c in listed])
        exited = [w.container_status(c.id) for c in listed]
        assert [(s.state, s.exit_code) for s in exited] == [(api_pb2.CONTAINER_EXITED, 0)] * len(listed), \
            "every container ended by its TERM trap"
        all_at_once([lambda p=p: w.stop_pod(p) for p in pod_ids])
        assert all(w.pod_status(p).state == api_pb2.SANDBOX_NOTREADY for p in pod_ids)
        assert w.net.leases() == []

        all_at_once([lambda p=p: w.remove_pod(p) for p in pod_ids])
        assert w.pods() == [] and w.containers() == []
    assert poller.rounds > 0 and poller.seen_containers, "the poller never saw the churn"
    assert poller.errors == []
    w.nothing_left(before)


def test_concurrent_pulls_of_one_image_coalesce_into_one_download(world):
    w = world
    w.registry.delay = 0.2  # every request answers late, so all the pulls overlap
    refs = all_at_once([w.pull] * 6)
    assert len(set(refs)) == 1
    images = w.d.images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images
    assert [(i.id, list(i.repo_tags)) for i in images] == [(refs[0], [IMAGE])]
    blobs = {path: hits for path, hits in w.registry.hits.items() if "/blobs/" in path}
    assert blobs and all(hits == 1 for hits in blobs.values()), f"each blob fetched once: {blobs}"


def test_the_same_pod_name_racing_gives_one_pod_and_already_exists_for_the_rest(world):
    w = world
    before = w.host_state()
    config = w.pod("twin")
    results = all_at_once([lambda: outcome(w.run_pod, config)] * 4)
    winners = [value for code, value in results if code == "ok"]
    assert len(winners) == 1, results
    losers = [(code, details) for code, details in results if code != "ok"]
    assert all(code == "ALREADY_EXISTS" and winners[0] in details for code, details in losers), losers
    assert [p.id for p in w.pods()] == winners
    assert w.pod_status(winners[0]).state == api_pb2.SANDBOX_READY
    assert len(w.net.leases()) == 1, "the losers' networks were never set up or were torn down"

    # Containers: the same name in one pod is one container; the losers get ALREADY_EXISTS naming it.
    w.pull()
    results = all_at_once([lambda: outcome(w.create, winners[0], config, w.container("dup"))] * 4)
    made = [value for code, value in results if code == "ok"]
    assert len(made) == 1, results
    assert all(code == "ALREADY_EXISTS" and made[0] in details for code, details in results if code != "ok")
    assert [c.id for c in w.containers()] == made

    w.stop_pod(winners[0])
    w.remove_pod(winners[0])
    w.nothing_left(before)


def test_repeated_concurrent_stops_and_removes_are_idempotent(world):
    w = world
    w.pull()
    before = w.host_state()
    config = w.pod("again")
    pod_id = w.run_pod(config)
    cids = [w.create(pod_id, config, w.container(n)) for n in ("a", "b")]
    for cid in cids:
        w.start(cid)
    rt = w.d.runtime

    assert {code for code, _ in all_at_once([lambda: outcome(w.stop, cids[0], 10)] * 4)} == {"ok"}
    assert w.container_status(cids[0]).state == api_pb2.CONTAINER_EXITED

    # One exited and one running container, each removed four times at once.
    remove = [lambda c=c: outcome(rt.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=c), 60)
              for c in cids]
    assert {code for code, _ in all_at_once(remove * 4)} == {"ok"}
    assert w.containers() == []
    for cid in cids:
        assert outcome(w.container_status, cid)[0] == "NOT_FOUND"

    assert {code for code, _ in all_at_once([lambda: outcome(w.stop_pod, pod_id)] * 4)} == {"ok"}
    assert w.pod_status(pod_id).state == api_pb2.SANDBOX_NOTREADY
    assert {code for code, _ in all_at_once([lambda: outcome(w.remove_pod, pod_id)] * 4)} == {"ok"}
    assert w.pods() == [] and outcome(w.pod_status, pod_id)[0] == "NOT_FOUND"
    assert w.net.leases() == []
    w.nothing_left(before)


def test_containers_created_while_their_pod_is_removed_do_not_outlive_it(world):
    """kubelet's CreateContainer timed out and the pod was deleted while the daemon still creates: every
    create either made a container that the pod's removal took along, or failed; none is orphaned."""
    w = world
    w.pull()
    before = w.host_state()
    configs = [w.pod(f"gone{i}") for i in range(5)]
    pod_ids = [w.run_pod(c) for c in configs]

    def creates_and_removal(pod_id: str, pod: api_pb2.PodSandboxConfig) -> list[tuple[str, object]]:
        calls = [lambda n=n: outcome(w.create, pod_id, pod, w.container(n)) for n in ("a", "b", "c")]
        return all_at_once(calls + [lambda: outcome(w.remove_pod, pod_id)])

    results = all_at_once([lambda p=p, c=c: creates_and_removal(p, c) for p, c in zip(pod_ids, configs, strict=True)])
    for per_pod in results:
        assert per_pod[-1][0] == "ok", per_pod
        assert {code for code, _ in per_pod[:-1]} <= {"ok", "NOT_FOUND", "FAILED_PRECONDITION"}, per_pod
    assert w.pods() == [] and w.containers() == []
    w.nothing_left(before)


def test_containers_started_while_their_pod_stops_are_not_left_running(world):
    """A StartContainer that loses the race with StopPodSandbox fails or is stopped with the pod: a stopped pod
    runs nothing."""
    w = world
    w.pull()
    before = w.host_state()
    configs = [w.pod(f"halt{i}") for i in range(5)]
    pod_ids = [w.run_pod(c) for c in configs]
    cids = {p: [w.create(p, c, w.container(n)) for n in ("a", "b")] for p, c in zip(pod_ids, configs, strict=True)}

    def starts_and_stop(pod_id: str) -> list[tuple[str, object]]:
        return all_at_once([lambda c=c: outcome(w.start, c) for c in cids[pod_id]]
                           + [lambda: outcome(w.stop_pod, pod_id)])

    results = all_at_once([lambda p=p: starts_and_stop(p) for p in pod_ids])
    for per_pod in results:
        assert per_pod[-1][0] == "ok", per_pod
        assert {code for code, _ in per_pod[:-1]} <= {"ok", "FAILED_PRECONDITION"}, per_pod
    assert all(w.pod_status(p).state == api_pb2.SANDBOX_NOTREADY for p in pod_ids)
    states = {c.id: c.state for c in w.containers()}
    assert len(states) == 10 and api_pb2.CONTAINER_RUNNING not in states.values(), states
    all_at_once([lambda p=p: w.remove_pod(p) for p in pod_ids])
    w.nothing_left(before)
