"""The pod sandbox manager: RunPodSandbox, Stop, Remove, Status and List, CRI-O style without a pause image.

A sandbox is a set of pinned namespaces (net, ipc, uts), a /dev/shm tmpfs, a pod cgroup, generated
resolv.conf/hosts/hostname files and, when the pod shares one PID namespace, an infra process (catatonit)
holding it. Every step that changes the host registers its undo; a failure unwinds them in reverse.
The record is written in state "creating" before the first host change, so that a daemon crash mid-way is
finished (undone) by reconciliation at the next start.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from cri.core import events as ev, sandbox_host, sandbox_orphans
from cri.core.claims import Claims
from cri.core.sandbox_resources import pod_limits
from cri.core.sandbox_files import (parse_bandwidth, render_hosts, render_resolv_conf, validate_hostname,
                                    validate_sysctls, validate_user_namespace)
from cri.core.undo import StepFailed, UndoStack, named_error, restore_or_undo, run_step
from cri.faults import crash_point
from cri.observe import trace
from cri.errors import CRIError, FailedPrecondition, InvalidArgument, Unavailable
from cri.state import Index, NameRegistry, RecordStore, new_id
from cri.state.container_record import IDMapSpec, ResourcesSpec
from cri.state.sandbox_record import MODE_POD, MODE_TARGET, SandboxRecord, SandboxSpec
from hostos import cgroups, mountinfo
from hostos.cgroups import limits as limits_module
from hostos.cgroups.driver import driver
from netplugins import (CNIManager, NetPluginError, NetworkNotReady, PodNetwork, PortMapping, connect_in_netns,
                        namespace_alive, pin_namespaces, unpin_namespace)

log = logging.getLogger(__name__)

ContainerHook = Callable[[str], Awaitable[None]]


def _id_map(m: IDMapSpec) -> tuple[int, int, int]:
    return m.container_id, m.host_id, m.length


def _unpin_all(ns_dir: Path, kinds: Iterable[str]) -> None:
    for kind in kinds:
        unpin_namespace(ns_dir / kind)


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
                 events: ev.EventBus | None = None, cgroup_manager: str = "cgroupfs") -> None:
        self._cgroups = driver(cgroup_manager)
        self._store = RecordStore(Path(root) / "sandboxes", SandboxRecord)
        self._dir = Path(state_dir) / "sandboxes"
        self._cni = cni
        self._handlers = set(runtime_handlers)
        self._default_runtime = default_runtime
        self._pod_cidr = pod_cidr
        self._catatonit = catatonit
        self._host_resolv_conf = host_resolv_conf
        self._host_hosts = host_hosts
        self._index: Index[SandboxRecord] = Index("pod sandbox")
        self._names = NameRegistry("pod sandbox")
        self._claims = Claims(self._names, self._index)
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop_containers: ContainerHook | None = None
        self._remove_containers: ContainerHook | None = None
        self._runtime_path = runtime_path
        self._host_userns_problem = sandbox_host.user_namespaces_problem()
        self._events = events

    # --- wiring and lifetime ---------------------------------------------------------------------------

    def set_runtime_handlers(self, handlers: Iterable[str], default_runtime: str) -> None:
        """The handlers after a configuration reload (SIGHUP); running pods keep the one they run with."""
        self._handlers = set(handlers)
        self._default_runtime = default_runtime

    def set_container_hooks(self, stop_all: ContainerHook, remove_all: ContainerHook) -> None:
        """The container manager's callbacks: stop (resp. remove) every container of a sandbox id."""
        self._stop_containers = stop_all
        self._remove_containers = remove_all

    async def start(self) -> None:
        """Load records; undo sandboxes a crash left half-created; mark those whose namespaces died NotReady;
        then sweep what a crash left with no record at all."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        known = set()
        for record in self._store.load_all():
            known.add(record.id)
            if not Path(record.sandbox_dir).is_dir():
                self._forget_host_state(record)
            if not await restore_or_undo(record, "sandbox", self._names, self._index, self._destroy):
                continue
            if record.state == "ready" and not self._alive(record):
                record.state = "notready"
                self._store.save(record, durable=False)
        await sandbox_orphans.sweep(self._dir, self._cni, known)

    def _forget_host_state(self, record: SandboxRecord) -> None:
        """The state dir lost the sandbox's directory (a reboot clears it): its namespaces, mounts and processes
        are gone, and the pids it recorded may name other processes now. Its IP lease and CNI cache entry
        outlive a reboot, so network_ready stays set for Stop's CNI DEL."""
        if record.state != "ready" and not record.infra_parent_pid:
            return
        log.warning("sandbox %s: its directory %s is gone (the host rebooted?): its namespaces and processes are "
                    "taken as gone", record.id, record.sandbox_dir)
        if record.state == "ready":
            record.state = "notready"
        record.infra_pid = record.infra_start_time = record.infra_parent_pid = 0
        self._store.save(record, durable=False)

    async def stop(self) -> None:
        """Sandboxes outlive the daemon: nothing to do at shutdown."""

    # --- queries -------------------------------------------------------------------------------------------

    def get(self, ref: str) -> SandboxRecord:
        """The sandbox with this id or unique id prefix; NotFound otherwise."""
        return self._index.get(ref)

    def snapshot(self, sandbox_id: str) -> SandboxRecord | None:
        """A copy of the record as it is now (for events, which are sent later)."""
        record = self._index.find(sandbox_id)
        return record.model_copy(deep=True) if record is not None else None

    def _publish(self, record: SandboxRecord, *kinds: int) -> None:
        """The sandbox's own lifecycle events, with its id as the container id (evented PLEG follows pods so)."""
        if self._events is None:
            return
        for kind in kinds:  # the deep copy only for a stream (in-process listeners take none)
            copy = record.model_copy(deep=True) if self._events.subscribers else None
            self._events.publish(ev.ContainerEvent(record.id, record.id, kind, time.time_ns(), copy))

    def find(self, ref: str) -> SandboxRecord | None:
        return self._index.find(ref)

    def list(self, id_prefix: str = "", state: str | None = None,
             labels: dict[str, str] | None = None) -> list[SandboxRecord]:
        out = []
        for record in self._index:
            self._refresh(record)
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
        return self._refresh(self._index.get(ref))

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

    @staticmethod
    def _alive(record: SandboxRecord) -> bool:
        """Whether what holds the pod together still exists: its network namespace and its infra process."""
        if record.netns_path and not namespace_alive(record.netns_path):
            return False
        if record.infra_pid and not sandbox_host.infra_running(record.infra_pid, record.infra_start_time):
            return False
        return True

    def _refresh(self, record: SandboxRecord) -> SandboxRecord:
        """A ready pod whose infra process died is NotReady (kubelet then recreates it)."""
        if record.state == "ready" and record.infra_pid and not self._alive(record):
            record.state = "notready"
            self._store.save(record, durable=False)
            self._publish(record, ev.STOPPED)
        return record

    async def open_port(self, ref: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP stream to localhost:`port` inside the pod's network namespace (the port-forward backend)."""
        record = self._refresh(self._index.get(ref))
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

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def update_resources(self, ref: str, resources: ResourcesSpec, overhead: ResourcesSpec) -> None:
        """UpdatePodSandboxResources: write the pod cgroup's new limits (cri/core/sandbox_resources.py)."""
        record = self.get(ref)
        async with self._lock(record.id):
            if record.state != "ready":
                raise FailedPrecondition(f"pod sandbox {record.id} is not ready ({record.state}): nothing to resize")
            shared = self._cgroups.parent("")
            if record.cgroup_parent == shared:
                raise FailedPrecondition(f"pod sandbox {record.id} has no cgroup of its own (RunPodSandbox gave no "
                                         f"cgroup_parent; such pods share {shared})")
            limits = pod_limits(resources, overhead)
            try:
                await asyncio.to_thread(limits_module.apply, record.cgroup_parent, limits)
            except ValueError as e:
                raise InvalidArgument(f"pod sandbox {record.id}: {e}") from None
            except OSError as e:
                raise FailedPrecondition(f"pod sandbox {record.id}: resizing its cgroup {record.cgroup_parent}: "
                                         f"{e.strerror or e}") from None
            record.resources, record.overhead = resources, overhead
            self._store.save(record, durable=False)

    # --- RunPodSandbox -------------------------------------------------------------------------------------

    def _validate(self, spec: SandboxSpec) -> tuple[str, dict[str, str], str]:
        opts = spec.namespace_options
        if MODE_TARGET in (opts.network, opts.ipc, opts.pid):
            raise InvalidArgument("namespace mode TARGET applies to containers, not to pod sandboxes")
        handler = spec.runtime_handler or self._default_runtime
        if handler not in self._handlers:
            raise InvalidArgument(f"runtime handler {handler!r} is not configured (known: {sorted(self._handlers)})")
        validate_user_namespace(opts)
        sysctls = validate_sysctls(spec.sysctls, opts.host_network, opts.host_ipc)
        resolv = render_resolv_conf(spec.dns.servers, spec.dns.searches, spec.dns.options)
        if spec.hostname:
            if opts.host_network:
                # The pod shares the host's UTS namespace; containerd's runtimes fail such a pod (runc: "unable to
                # set hostname without a private UTS namespace"), and kubelet never sends one with hostNetwork.
                raise InvalidArgument(f"hostname {spec.hostname!r} cannot be set for a pod in the host's network "
                                      "namespace: it shares the host's UTS namespace and hostname")
            validate_hostname(spec.hostname)
        parse_bandwidth(spec.annotations)
        if spec.log_directory and not os.path.isabs(spec.log_directory):
            raise InvalidArgument(f"log directory {spec.log_directory!r} must be an absolute path")
        return handler, sysctls, resolv

    def mark_abandoned(self, spec: SandboxSpec) -> None:
        """The caller gave up before RunPodSandbox returned: its retry gets that sandbox, not 'name is reserved'."""
        self._claims.abandon(spec.reserved_name)

    def user_namespaces_problem(self, handler: str) -> str | None:
        """Why pods of this runtime handler cannot have a user namespace of their own, or None (Status says so).

        Any OCI runtime joins a user namespace by path; runc 1.1 and crun 1.8 both do, once the rootfs is where
        the pod's root can reach it (containers.py binds it so).
        """
        if self._host_userns_problem:
            return self._host_userns_problem
        if self._runtime_path(handler) is None:
            return f"the runtime of handler {handler!r} is not installed"
        return None

    async def run_pod(self, spec: SandboxSpec) -> SandboxRecord:
        """Create a ready sandbox; on any failure everything done so far is undone and the error names the step."""
        claimed = await self._claims.claim(spec.reserved_name, lambda r: r.state == "ready",
                                           lambda r: r.config == spec.original)
        if claimed is not None:
            log.info("sandbox %s: handing the result of an abandoned RunPodSandbox to its retry", claimed.id)
            return claimed
        handler, sysctls, resolv = self._validate(spec)
        opts = spec.namespace_options
        if opts.own_userns:
            problem = self.user_namespaces_problem(handler)
            if problem:
                raise FailedPrecondition(f"runtime handler {handler!r} cannot run a pod with its own user namespace "
                                         f"(userns_options mode POD): {problem}")
        if not opts.host_network:
            if self._cni is None:
                raise NetworkNotReady("no CNI network is configured")
            ready, _, message = self._cni.ready()
            if not ready:
                self._cni.reload()
                ready, _, message = self._cni.ready()
                if not ready:
                    raise NetworkNotReady(message)
        sandbox_id = new_id()
        sandbox_dir = self._dir / sandbox_id
        if opts.host_network:
            hostname = os.uname().nodename
        else:
            hostname = spec.hostname or sandbox_id[:12]
        try:
            cgroup_parent = self._cgroups.parent(spec.cgroup_parent)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        ns_dir = sandbox_dir / "ns"
        record = SandboxRecord(
            id=sandbox_id, name=spec.name, namespace=spec.namespace, uid=spec.uid, attempt=spec.attempt,
            created_at=time.time_ns(), runtime_handler=handler, requested_handler=spec.runtime_handler,
            log_directory=spec.log_directory,
            labels=spec.labels, annotations=spec.annotations, hostname=hostname,
            namespace_options=opts, sandbox_dir=str(sandbox_dir),
            # Known before they exist, so a record saved before the pinning lets reconciliation undo it.
            netns_path="" if opts.host_network else str(ns_dir / "net"),
            ipc_path="" if opts.host_ipc else str(ns_dir / "ipc"),
            uts_path="" if opts.host_network else str(ns_dir / "uts"),
            userns_path=str(ns_dir / "user") if opts.own_userns else "",
            resolv_conf_path=str(sandbox_dir / "resolv.conf"), hosts_path=str(sandbox_dir / "hosts"),
            hostname_path=str(sandbox_dir / "hostname"),
            shm_path="/dev/shm" if opts.host_ipc else str(sandbox_dir / "shm"),
            cgroup_parent=cgroup_parent, cgroup_path=self._cgroups.child(cgroup_parent, f"pycri-{sandbox_id}"),
            port_mappings=[] if opts.host_network else spec.port_mappings, dns=spec.dns, sysctls=sysctls,
            privileged=spec.privileged, config=spec.original)
        self._names.reserve(record.reserved_name, sandbox_id)
        undo = UndoStack()
        undo.push("name reservation", lambda: self._names.release(record.reserved_name, sandbox_id))
        trace.timeline.name(sandbox_id, f"{spec.namespace}/{spec.name}")
        with self._claims.creating(record.reserved_name):
            try:
                await self._create(record, resolv, undo)
            except BaseException as e:
                await undo.unwind()
                if isinstance(e, StepFailed):
                    raise named_error(e.step, e.cause) from e.cause
                raise
        self._publish(record, ev.CREATED, ev.STARTED)
        return record

    async def _create(self, record: SandboxRecord, resolv: str, undo: UndoStack) -> None:
        opts = record.namespace_options
        sandbox_dir = Path(record.sandbox_dir)
        try:
            sandbox_dir.mkdir(mode=0o711)
        except OSError as e:
            raise StepFailed("creating the sandbox directory", e) from e
        undo.push("sandbox directory", lambda: shutil.rmtree(sandbox_dir, ignore_errors=True))
        try:
            self._store.save(record, durable=False)
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e
        undo.push("sandbox record", lambda: self._store.delete(record.id))
        crash_point("sandbox.run.after_record")
        if record.log_directory and not os.path.isdir(record.log_directory):
            try:
                os.makedirs(record.log_directory, mode=0o700)
            except OSError as e:
                raise StepFailed("creating the log directory", e) from e
            undo.push("log directory", lambda: shutil.rmtree(record.log_directory, ignore_errors=True))

        kinds = [k for k, host_mode in (("net", opts.host_network), ("ipc", opts.host_ipc),
                                        ("uts", opts.host_network)) if not host_mode]
        ns_dir = sandbox_dir / "ns"
        pinned = [*kinds, "user"] if opts.own_userns else kinds
        undo.push("pinned namespaces", lambda: _unpin_all(ns_dir, pinned))
        with trace.phase("namespaces", pod=record.id):
            await run_step("creating the pod's namespaces",
                           pin_namespaces(ns_dir, kinds, record.hostname if "uts" in kinds else None, record.sysctls,
                                          uid_map=[_id_map(m) for m in opts.uid_mappings],
                                          gid_map=[_id_map(m) for m in opts.gid_mappings], userns=opts.own_userns))
        crash_point("sandbox.run.after_namespaces")

        # The CNI ADD is the slow part (tens of ms): everything else runs while the plugins do.
        results = await asyncio.gather(self._setup_network(record, undo), self._setup_local(record, resolv, undo),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        crash_point("sandbox.run.after_network")
        record.state = "ready"
        try:
            self._store.save(record, durable=False)
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e
        self._index.add(record.id, record)

    async def _setup_network(self, record: SandboxRecord, undo: UndoStack) -> None:
        if record.namespace_options.host_network:
            return
        pod = self._pod_network(record)
        cni = self._cni
        assert cni is not None  # (a pod network is set up only with the CNI manager the daemon always makes)
        undo.push("pod network", lambda: cni.teardown(pod))
        with trace.phase("cni_add", pod=record.id):
            result = await run_step("setting up the pod network (CNI ADD)", cni.setup(pod))
        record.ips = result.pod_ips()
        record.network_ready = True
        hosts = render_hosts(record.hostname, record.ips)
        await run_step("writing /etc/hosts", asyncio.to_thread(Path(record.hosts_path).write_text, hosts))

    async def _setup_local(self, record: SandboxRecord, resolv: str, undo: UndoStack) -> None:
        # The files, the /dev/shm mount and the pod cgroup are ~40 syscalls: in a thread, so that List and Status
        # calls stay quick while many pods start at once.
        with trace.phase("sandbox_files", pod=record.id):
            await asyncio.to_thread(self._prepare_local, record, resolv, undo)
        if record.namespace_options.pid == MODE_POD:
            namespaces = {"net": record.netns_path, "ipc": record.ipc_path, "uts": record.uts_path,
                          "user": record.userns_path}  # the PID namespace then belongs to the pod's user one
            with trace.phase("infra", pod=record.id):
                given = {k: v for k, v in namespaces.items() if v}
                infra = await run_step("starting the infra process",
                                       sandbox_host.start_infra(self._catatonit, given, record.cgroup_path,
                                                                record.sandbox_dir, self._place_infra(record)))
            record.infra_pid, record.infra_start_time, record.infra_parent_pid = infra
            undo.push("infra process", lambda: sandbox_host.stop_infra(*infra))
        try:  # so that reconciliation after a crash knows the cgroups and the infra to remove
            self._store.save(record, durable=False)
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e

    def _prepare_local(self, record: SandboxRecord, resolv: str, undo: UndoStack) -> None:
        opts = record.namespace_options
        sandbox_dir = Path(record.sandbox_dir)
        try:
            step = "writing resolv.conf"
            if resolv:
                (sandbox_dir / "resolv.conf").write_text(resolv)
            else:
                shutil.copyfile(self._host_resolv_conf, sandbox_dir / "resolv.conf")
            step = "writing the hostname file"
            (sandbox_dir / "hostname").write_text(record.hostname + "\n")
            if opts.host_network:
                step = "copying the host's /etc/hosts"
                shutil.copyfile(self._host_hosts, record.hosts_path)
            if not opts.host_ipc:
                step = "mounting the pod's /dev/shm"
                undo.push("shm mount", lambda: sandbox_host.unmount(record.shm_path))
                sandbox_host.mount_shm(Path(record.shm_path))
            if self._cgroups.name == "cgroupfs":  # under systemd the infra's scope is the pod cgroup
                step = "creating the pod cgroup"
                record.cgroups_created = cgroups.create(record.cgroup_path)
                undo.push("pod cgroup", lambda: cgroups.remove_created(record.cgroups_created))
        except (OSError, CRIError) as e:
            raise StepFailed(step, e) from e

    def _pod_network(self, record: SandboxRecord) -> PodNetwork:
        return PodNetwork(
            id=record.id, name=record.name, namespace=record.namespace, uid=record.uid, netns=record.netns_path,
            port_mappings=tuple(PortMapping(p.host_port, p.container_port, p.protocol, p.host_ip)
                                for p in record.port_mappings if p.host_port),
            bandwidth=parse_bandwidth(record.annotations),
            pod_cidr=self._pod_cidr() or None)

    # --- StopPodSandbox / RemovePodSandbox -------------------------------------------------------------------

    async def stop_pod(self, ref: str) -> None:
        """Stop the pod's containers, tear its network down and kill the infra; the record stays. Idempotent."""
        record = self._index.find(ref)
        if record is None:
            return
        async with self._lock(record.id):
            if record.id in self._index:  # not removed while we waited for the lock
                await self._stop_locked(record)

    async def _stop_locked(self, record: SandboxRecord) -> None:
        if self._stop_containers is not None and record.state != "creating":
            await self._stop_containers(record.id)
        work = []
        if record.network_ready and self._cni is not None:
            work.append(self._teardown_network(record))
        if record.infra_parent_pid:
            work.append(self._stop_infra(record))
        errors = [r for r in await asyncio.gather(*work, return_exceptions=True) if isinstance(r, BaseException)]
        crash_point("sandbox.stop.after_network")
        was_ready = record.state == "ready"
        record.state = "notready"
        self._store.save(record, durable=False)
        if was_ready:
            self._publish(record, ev.STOPPED)
        if errors:
            raise errors[0]

    async def _teardown_network(self, record: SandboxRecord) -> None:
        assert self._cni is not None  # (network_ready is set only with one)
        try:
            with trace.phase("cni_del", pod_sandbox_id=record.id):  # not part of the start timeline
                await self._cni.teardown(self._pod_network(record))
        except Exception as e:
            raise named_error("tearing down the pod network (CNI DEL)", e) from e
        record.network_ready = False

    async def _stop_infra(self, record: SandboxRecord) -> None:
        await sandbox_host.stop_infra(record.infra_pid, record.infra_start_time, record.infra_parent_pid)
        record.infra_pid = record.infra_start_time = record.infra_parent_pid = 0

    async def remove_pod(self, ref: str) -> None:
        """Stop if needed, then remove namespaces, mounts, cgroup, files, record and name. Idempotent."""
        record = self._index.find(ref)
        if record is None:
            return
        lock = self._lock(record.id)
        async with lock:
            if record.id not in self._index:
                return  # removed while we waited for the lock
            if self._remove_containers is not None:
                await self._remove_containers(record.id)
            await self._destroy(record)
            self._index.remove(record.id)
            self._names.release(record.reserved_name, record.id)
            self._publish(record, ev.DELETED)
        self._locks.pop(record.id, None)

    async def _destroy(self, record: SandboxRecord) -> None:
        """Undo everything a sandbox may have: used by Remove and by reconciliation of a half-created one."""
        half_created = record.state == "creating"
        if half_created and self._cni is not None and record.netns_path:
            record.network_ready = True  # an ADD may have run before the crash: DEL is idempotent
        if record.network_ready or record.infra_parent_pid or record.state != "notready":
            await self._stop_locked(record)
        if not record.namespace_options.host_ipc and record.shm_path:
            sandbox_host.unmount(record.shm_path)
        for path in (record.netns_path, record.ipc_path, record.uts_path, record.userns_path):
            if path:
                unpin_namespace(path)
        crash_point("sandbox.remove.after_namespaces")
        for target in mountinfo.mounts_below(Path(record.sandbox_dir) / "rootfs"):  # containers' rootfs binds
            sandbox_host.unmount(target)
        if record.cgroups_created:
            await cgroups.remove_created(record.cgroups_created)
        elif half_created:  # the crash may have come before the record learned which cgroups it made
            await cgroups.remove_created(self._cgroup_dirs(record.cgroup_path))
        await self._cgroups.release(record.cgroup_path)  # systemd: the infra's scope, if a crash left it
        await asyncio.to_thread(self._delete_files, record)

    def _delete_files(self, record: SandboxRecord) -> None:
        """In a worker thread: on a busy disk these unlinks took milliseconds of the event loop."""
        shutil.rmtree(record.sandbox_dir, ignore_errors=True)
        self._store.delete(record.id)

    def _place_infra(self, record: SandboxRecord) -> Callable[[int], Awaitable[None]]:
        """How the infra's parent enters the pod cgroup: moved into the directory made before (cgroupfs), or put
        in a new transient scope, which is then the pod cgroup (systemd)."""
        if self._cgroups.name == "cgroupfs":
            return lambda pid: asyncio.to_thread(cgroups.move, pid, record.cgroup_path)
        return lambda pid: self._cgroups.place(pid, record.cgroup_path, f"pycri infra of pod {record.id}")

    @staticmethod
    def _cgroup_dirs(path: str) -> builtins.list[str]:
        """The sandbox's own cgroup dir in every hierarchy (its parents may be shared, so they are left)."""
        return [str(d) for d in cgroups.cgroup_dirs(path)]
