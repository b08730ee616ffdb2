"""Fault injection: kill the daemon with SIGKILL at a named point inside an operation, restart it,
and check that nothing leaked, no record is corrupt, and kubelet's retry of the call succeeds.

The points are `cri.faults.crash_point(...)` calls in the core; a point is armed by starting the
daemon with PYCRI_FAULT_POINT=<name>. tests/integration/test_faults.py runs every scenario.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable

import grpc
from cri.api.v1 import api_pb2

from conformance.client import Client, container_config, pod_config
from conformance.daemon import Daemon
from conformance.hostcheck import leaks, snapshot
from hostos import cgroups


@dataclass
class World:
    """What a scenario made before the crash, for the call and its retry."""

    image: str
    cgroup_parent: str = ""
    pod: api_pb2.PodSandboxConfig | None = None
    pod_id: str = ""
    container: api_pb2.ContainerConfig | None = None
    container_id: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Scenario:
    point: str
    prepare: Callable[[Client, World], None]
    call: Callable[[Client, World], None]
    check_after_restart: Callable[[Client, World], None]


def _new_pod(c: Client, w: World) -> None:
    w.pod = pod_config(f"fault-{uuid.uuid4().hex[:8]}", cgroup_parent=w.cgroup_parent)


def _running_pod(c: Client, w: World) -> None:
    c.pull(w.image)
    _new_pod(c, w)
    w.pod_id = c.run_pod(w.pod)


def _new_container(c: Client, w: World) -> None:
    _running_pod(c, w)
    w.container = container_config("sleeper", w.image, command=["sleep", "3600"])


def _created_container(c: Client, w: World) -> None:
    _new_container(c, w)
    w.container_id = c.create(w.pod_id, w.container, w.pod)


def _running_container(c: Client, w: World) -> None:
    _created_container(c, w)
    c.start(w.container_id)


def _again(call: Callable[[Client, World], None], check: Callable[[Client, World], None]):
    """kubelet's retry after the restart: the same call with the same arguments (it must not fail with 'name is
    reserved' or 'not found'), then a check that it achieved what it was for."""
    def retry(c: Client, w: World) -> None:
        call(c, w)
        check(c, w)
    return retry


def _run_pod(c: Client, w: World) -> None:
    w.pod_id = c.run_pod(w.pod)


def _pod_ready(c: Client, w: World) -> None:
    assert c.pod_state(w.pod_id) == api_pb2.SANDBOX_READY


def _create(c: Client, w: World) -> None:
    w.container_id = c.create(w.pod_id, w.container, w.pod)


def _starts_and_runs(c: Client, w: World) -> None:
    c.start(w.container_id)
    assert c.container_state(w.container_id) == api_pb2.CONTAINER_RUNNING


_retry_create = _again(_create, _starts_and_runs)


def _start(c: Client, w: World) -> None:
    c.start(w.container_id)


def _retry_start(c: Client, w: World) -> None:
    state = c.container_state(w.container_id)
    if state == api_pb2.CONTAINER_CREATED:
        c.start(w.container_id)
    elif state != api_pb2.CONTAINER_RUNNING:  # kubelet would recreate it
        c.remove(w.container_id)
        _retry_create(c, w)
    assert c.container_state(w.container_id) == api_pb2.CONTAINER_RUNNING


def _stop(c: Client, w: World) -> None:
    c.stop(w.container_id, grace=2)


def _exited(c: Client, w: World) -> None:
    assert c.container_state(w.container_id) == api_pb2.CONTAINER_EXITED


def _remove(c: Client, w: World) -> None:
    c.remove(w.container_id)


def _container_gone(c: Client, w: World) -> None:
    req = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(id=w.container_id))
    assert not c.runtime.ListContainers(req).containers


def _stop_pod(c: Client, w: World) -> None:
    c.stop_pod(w.pod_id)


def _pod_not_ready(c: Client, w: World) -> None:
    assert c.pod_state(w.pod_id) == api_pb2.SANDBOX_NOTREADY


def _remove_pod(c: Client, w: World) -> None:
    c.remove_pod(w.pod_id)


def _pod_gone(c: Client, w: World) -> None:
    req = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=w.pod_id))
    assert not c.runtime.ListPodSandbox(req).items


def _pull(c: Client, w: World) -> None:
    w.extra["image_ref"] = c.pull(w.image)


def _pulled(c: Client, w: World) -> None:
    status = c.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=w.image)))
    assert status.image.id == w.extra["image_ref"]


def _nothing(c: Client, w: World) -> None:
    pass


SCENARIOS = [
    Scenario("sandbox.run.after_record", _new_pod, _run_pod, _again(_run_pod, _pod_ready)),
    Scenario("sandbox.run.after_namespaces", _new_pod, _run_pod, _again(_run_pod, _pod_ready)),
    Scenario("sandbox.run.after_network", _new_pod, _run_pod, _again(_run_pod, _pod_ready)),
    Scenario("sandbox.stop.after_network", _running_pod, _stop_pod, _again(_stop_pod, _pod_not_ready)),
    Scenario("sandbox.remove.after_namespaces", _running_pod, _remove_pod, _again(_remove_pod, _pod_gone)),
    Scenario("container.create.after_record", _new_container, _create, _retry_create),
    Scenario("container.create.after_rootfs", _new_container, _create, _retry_create),
    Scenario("container.create.after_runtime", _new_container, _create, _retry_create),
    Scenario("container.start.after_runtime", _created_container, _start, _retry_start),
    Scenario("container.stop.after_signal", _running_container, _stop, _again(_stop, _exited)),
    Scenario("container.remove.after_record", _running_container, _remove, _again(_remove, _container_gone)),
    Scenario("container.remove.after_runtime", _running_container, _remove, _again(_remove, _container_gone)),
    Scenario("image.pull.after_blobs", _nothing, _pull, _again(_pull, _pulled)),
]
POINTS = [s.point for s in SCENARIOS]


def run(scenario: Scenario, settings: dict, image: str, bridge: str = "", network: str = "",
        cgroup_parent: str = "") -> dict[str, list[str]]:
    """Run one scenario in a fresh daemon root; return the leaks found (empty when clean).
    `bridge` and `network` name the CNI bridge and network, to look for veths and NAT rules; `cgroup_parent`
    (a cgroupfs path of the run's own, removed after) holds the pods' cgroups, so that every pod, container and
    conmon cgroup is checked and no other test's cgroups are counted. Without it, only a new top-level cgroup
    named pycri* counts, which any other runtime or test on the host may make meanwhile."""
    daemon = Daemon(settings)
    marker = cgroup_parent.strip("/") + "/" if cgroup_parent else "pycri"

    def host_state() -> dict[str, set[str]]:
        return snapshot(cgroup_marker=marker, iptables_marker=network, scope=str(daemon.base), bridge=bridge)

    before = host_state()
    world = World(image=image, cgroup_parent=cgroup_parent)
    try:
        daemon.start()
        client = daemon.client()
        scenario.prepare(client, world)
        client.close()
        daemon.stop()

        daemon.start(env={"PYCRI_FAULT_POINT": scenario.point})
        client = daemon.client()
        try:
            scenario.call(client, world)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(f"{scenario.point}: the call failed with {e.code().name}: {e.details()}") from None
        finally:
            client.close()
        if daemon.proc.wait(timeout=30) != -9:
            raise AssertionError(f"{scenario.point}: the daemon did not crash at the point (was it reached?)")

        daemon.start()
        client = daemon.client()
        scenario.check_after_restart(client, world)
        client.remove_everything()
        client.close()
        daemon.stop()
    finally:
        daemon.cleanup()
    left = leaks(before, host_state())
    if cgroup_parent:
        cgroups.remove(cgroup_parent)  # the parent kubelet would own; what is still busy in it was reported
    return left
