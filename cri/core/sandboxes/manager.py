"""SandboxManager: the one front the CRI handlers and the container manager call; each call goes to the part that
owns it. Pod sandboxes are CRI-O style, without a pause image.

    run.py        RunPodSandbox (checks, record, namespaces, network, files, /dev/shm, cgroup, infra, all undone
                  on failure)
    teardown.py   StopPodSandbox, RemovePodSandbox, and the undo of a half-created sandbox
    recover.py    reconciliation at start, and the sweep of what a crash left without a record
    resources.py  UpdatePodSandboxResources
    files.py      pure rules and renderings (sysctls, resolv.conf, hosts, hostname, user namespace)
    host.py       host-side pieces: /dev/shm, rootfs binds for user-namespaced pods, the infra process; PodHost,
                  the one seam through which the parts act on the host (a fake in the unit tests)
    table.py      what they share: records, names, locks, cgroup driver, CNI, container hooks, events
    infrawatch.py the infra processes' liveness from memory (a pidfd each, read by the loop)

A sandbox is a set of pinned namespaces (net, ipc, uts), a /dev/shm tmpfs, a pod cgroup, generated
resolv.conf/hosts/hostname files and, when the pod shares one PID namespace, an infra process (catatonit)
holding it. The record is written in state "creating" before the first host change, so that a daemon crash
mid-way is finished (undone) by reconciliation at the next start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cri.core import events as ev
from cri.errors import FailedPrecondition, InvalidArgument, Unavailable
from cri.state.container_record import ResourcesSpec
from cri.state.sandbox_record import SandboxRecord, SandboxSpec
from netplugins import CNIManager, NetPluginError, connect_in_netns

from . import resources as pod_resources
from .host import PodHost
from .recover import recover
from .run import Runner
from .table import ContainerHook, Table
from .teardown import Teardown


@dataclass
class SandboxStatus:
    record: SandboxRecord
    info: dict[str, Any]


class SandboxManager:
    """Owns every pod sandbox: its record, its namespaces, network, cgroup and files."""

    def __init__(self, root: Path, state_dir: Path, cni: CNIManager | None, *, runtime_handlers: Iterable[str],
                 default_runtime: str, pod_cidr: Callable[[], str] = lambda: "", catatonit: str = "catatonit",
                 runtime_path: Callable[[str], str | None] = lambda handler: None,
                 host_resolv_conf: Path = Path("/etc/resolv.conf"), host_hosts: Path = Path("/etc/hosts"),
                 events: ev.EventBus | None = None, cgroup_manager: str = "cgroupfs",
                 host: PodHost | None = None) -> None:
        """``host`` replaces the real host actions (tests/unit/test_sandbox_manager.py)."""
        self._t = Table(root, state_dir, cni, pod_cidr=pod_cidr, events=events, cgroup_manager=cgroup_manager,
                        host=host or PodHost())
        self._runner = Runner(self._t, runtime_handlers=runtime_handlers, default_runtime=default_runtime,
                              catatonit=catatonit, runtime_path=runtime_path, host_resolv_conf=host_resolv_conf,
                              host_hosts=host_hosts)
        self._teardown = Teardown(self._t)

    # --- wiring and lifetime ---------------------------------------------------------------------------

    def set_runtime_handlers(self, handlers: Iterable[str], default_runtime: str) -> None:
        """The handlers after a configuration reload (SIGHUP); running pods keep the one they run with."""
        self._runner.handlers = set(handlers)
        self._runner.default_runtime = default_runtime

    def set_container_hooks(self, stop_all: ContainerHook, remove_all: ContainerHook) -> None:
        """The container manager's callbacks: stop (resp. remove) every container of a sandbox id."""
        self._t.stop_containers = stop_all
        self._t.remove_containers = remove_all

    async def start(self) -> None:
        """Take the records back and sweep what a crash left (recover.py)."""
        await recover(self._t, self._teardown)

    async def stop(self) -> None:
        """Sandboxes outlive the daemon: only the watches of their infra processes end."""
        self._t.host.close()

    # --- queries -------------------------------------------------------------------------------------------

    def get(self, ref: str) -> SandboxRecord:
        """The sandbox with this id or unique id prefix; NotFound otherwise."""
        return self._t.index.get(ref)

    def snapshot(self, sandbox_id: str) -> SandboxRecord | None:
        """A copy of the record as it is now (for events, which are sent later)."""
        record = self._t.index.find(sandbox_id)
        return record.model_copy(deep=True) if record is not None else None

    def find(self, ref: str) -> SandboxRecord | None:
        return self._t.index.find(ref)

    def list(self, id_prefix: str = "", state: str | None = None,
             labels: dict[str, str] | None = None) -> list[SandboxRecord]:
        out = []
        for record in self._t.index:
            self._t.refresh(record)
            if id_prefix and not record.id.startswith(id_prefix):
                continue
            if state is not None and record.state != state:
                continue
            if labels and any(record.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(record)
        return sorted(out, key=lambda r: r.created_at)

    def current(self, ref: str) -> SandboxRecord:
        """The sandbox with this id or unique id prefix, NotReady if its infra process died; NotFound otherwise."""
        return self._t.refresh(self._t.index.get(ref))

    def status(self, ref: str) -> SandboxStatus:
        record = self.current(ref)
        info = {
            "pid": record.infra_pid,
            "netns": record.netns_path, "ipcns": record.ipc_path, "utsns": record.uts_path,
            "userns": record.userns_path,
            "sandboxDir": record.sandbox_dir, "shm": record.shm_path,
            "resolvConf": record.resolv_conf_path, "hosts": record.hosts_path, "hostname": record.hostname,
            "cgroupParent": record.cgroup_parent, "cgroupPath": record.cgroup_path,
            "runtimeHandler": record.runtime_handler, "networkReady": record.network_ready,
            "portMappings": [p.model_dump() for p in record.port_mappings],
            "sysctls": record.sysctls, "config": record.config,
        }
        if record.resources is not None:
            info["resources"] = record.resources.model_dump()
            info["overhead"] = record.overhead.model_dump() if record.overhead else {}
        return SandboxStatus(record, info)

    def user_namespaces_problem(self, handler: str) -> str | None:
        """Why pods of this runtime handler cannot have a user namespace of their own, or None (Status says so)."""
        return self._runner.user_namespaces_problem(handler)

    async def open_port(self, ref: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP stream to localhost:`port` inside the pod's network namespace (the port-forward backend)."""
        record = self._t.refresh(self._t.index.get(ref))
        if record.state != "ready":
            raise FailedPrecondition(f"pod sandbox {record.id} is not ready")
        if not 0 < port < 65536:
            raise InvalidArgument(f"port {port} is out of range")
        try:
            if record.netns_path:
                sock = await connect_in_netns(record.netns_path, port)
                return await asyncio.open_connection(sock=sock)
            return await asyncio.open_connection("127.0.0.1", port)
        except (OSError, NetPluginError) as e:
            raise Unavailable(f"connecting to port {port} in pod sandbox {record.id}: {e}") from e

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def run_pod(self, spec: SandboxSpec) -> SandboxRecord:
        """Create a ready sandbox; on any failure everything done so far is undone and the error names the step."""
        return await self._runner.run_pod(spec)

    def mark_abandoned(self, spec: SandboxSpec) -> None:
        """The caller gave up before RunPodSandbox returned: its retry gets that sandbox, not 'name is reserved'."""
        self._t.claims.abandon(spec.reserved_name)

    async def stop_pod(self, ref: str) -> None:
        """Stop the pod's containers, tear its network down and kill the infra; the record stays. Idempotent."""
        await self._teardown.stop_pod(ref)

    async def remove_pod(self, ref: str) -> None:
        """Stop if needed, then remove namespaces, mounts, cgroup, files, record and name. Idempotent."""
        await self._teardown.remove_pod(ref)

    async def update_resources(self, ref: str, resources: ResourcesSpec, overhead: ResourcesSpec) -> None:
        """UpdatePodSandboxResources: write the pod cgroup's new limits (resources.py)."""
        await pod_resources.update(self._t, ref, resources, overhead)
