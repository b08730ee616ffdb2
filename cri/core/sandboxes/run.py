"""RunPodSandbox: the request checked, the record saved in state creating before the first host change, then
namespaces, network (CNI ADD) alongside the files, /dev/shm, the pod cgroup and the infra process. Every step
that changes the host pushes its undo; a failure unwinds them in reverse and the error names the step."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from cri.core import events as ev
from cri.core.undo import StepFailed, UndoStack, named_error, run_step
from cri.errors import CRIError, FailedPrecondition, InvalidArgument
from cri.faults import crash_point
from cri.observe import trace
from cri.state import new_id
from cri.state.container_record import IDMapSpec
from cri.state.sandbox_record import MODE_POD, MODE_TARGET, SandboxRecord, SandboxSpec
from netplugins import NetworkNotReady

from .files import (parse_bandwidth, render_hosts, render_resolv_conf, validate_hostname, validate_sysctls,
                    validate_user_namespace)
from .table import Table

log = logging.getLogger(__name__)


def _id_map(m: IDMapSpec) -> tuple[int, int, int]:
    return m.container_id, m.host_id, m.length


class Runner:
    def __init__(self, t: Table, *, runtime_handlers: Iterable[str], default_runtime: str, catatonit: str,
                 runtime_path: Callable[[str], str | None], host_resolv_conf: Path, host_hosts: Path) -> None:
        self._t = t
        self.handlers = set(runtime_handlers)
        self.default_runtime = default_runtime
        self._catatonit = catatonit
        self._runtime_path = runtime_path
        self._host_resolv_conf = host_resolv_conf
        self._host_hosts = host_hosts
        self._host_userns_problem = t.host.user_namespaces_problem()

    def user_namespaces_problem(self, handler: str) -> str | None:
        """Why pods of this runtime handler cannot have a user namespace of their own, or None (Status says so).

        Any OCI runtime joins a user namespace by path; runc 1.1 and crun 1.8 both do, once the rootfs is where
        the pod's root can reach it (the container manager binds it so).
        """
        if self._host_userns_problem:
            return self._host_userns_problem
        if self._runtime_path(handler) is None:
            return f"the runtime of handler {handler!r} is not installed"
        return None

    def _validate(self, spec: SandboxSpec) -> tuple[str, dict[str, str], str]:
        opts = spec.namespace_options
        if MODE_TARGET in (opts.network, opts.ipc, opts.pid):
            raise InvalidArgument("namespace mode TARGET applies to containers, not to pod sandboxes")
        handler = spec.runtime_handler or self.default_runtime
        if handler not in self.handlers:
            raise InvalidArgument(f"runtime handler {handler!r} is not configured (known: {sorted(self.handlers)})")
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

    async def run_pod(self, spec: SandboxSpec) -> SandboxRecord:
        """Create a ready sandbox; on any failure everything done so far is undone and the error names the step."""
        claimed = await self._t.claims.claim(spec.reserved_name, lambda r: r.state == "ready",
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
            if self._t.cni is None:
                raise NetworkNotReady("no CNI network is configured")
            ready, _, message = self._t.cni.ready()
            if not ready:
                self._t.cni.reload()
                ready, _, message = self._t.cni.ready()
                if not ready:
                    raise NetworkNotReady(message)
        sandbox_id = new_id()
        sandbox_dir = self._t.dir / sandbox_id
        if opts.host_network:
            hostname = os.uname().nodename
        else:
            hostname = spec.hostname or sandbox_id[:12]
        try:
            cgroup_parent = self._t.cgroups.parent(spec.cgroup_parent)
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
            cgroup_parent=cgroup_parent, cgroup_path=self._t.cgroups.child(cgroup_parent, f"pycri-{sandbox_id}"),
            port_mappings=[] if opts.host_network else spec.port_mappings, dns=spec.dns, sysctls=sysctls,
            privileged=spec.privileged, config=spec.original)
        self._t.names.reserve(record.reserved_name, sandbox_id)
        undo = UndoStack()
        undo.push("name reservation", lambda: self._t.names.release(record.reserved_name, sandbox_id))
        trace.timeline.name(sandbox_id, f"{spec.namespace}/{spec.name}")
        with self._t.claims.creating(record.reserved_name):
            try:
                await self._create(record, resolv, undo)
            except BaseException as e:
                await undo.unwind()
                if isinstance(e, StepFailed):
                    raise named_error(e.step, e.cause) from e.cause
                raise
        self._t.publish(record, ev.CREATED, ev.STARTED)
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
            await asyncio.wrap_future(self._t.store.save(record, durable=False))
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e
        undo.push("sandbox record", lambda: asyncio.wrap_future(self._t.store.delete(record.id)))
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
        undo.push("pinned namespaces", lambda: self._unpin_all(ns_dir, pinned))
        with trace.phase("namespaces", pod=record.id):
            await run_step("creating the pod's namespaces",
                           self._t.host.pin_namespaces(ns_dir, kinds, record.hostname if "uts" in kinds else None,
                                                       record.sysctls, [_id_map(m) for m in opts.uid_mappings],
                                                       [_id_map(m) for m in opts.gid_mappings], opts.own_userns))
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
            await asyncio.wrap_future(self._t.store.save(record, durable=False))
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e
        self._t.index.add(record.id, record)

    async def _setup_network(self, record: SandboxRecord, undo: UndoStack) -> None:
        if record.namespace_options.host_network:
            return
        pod = self._t.pod_network(record)
        cni = self._t.cni
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
        host = self._t.host
        if record.namespace_options.pid == MODE_POD:
            namespaces = {"net": record.netns_path, "ipc": record.ipc_path, "uts": record.uts_path,
                          "user": record.userns_path}  # the PID namespace then belongs to the pod's user one
            with trace.phase("infra", pod=record.id):
                given = {k: v for k, v in namespaces.items() if v}
                infra = await run_step("starting the infra process",
                                       host.start_infra(self._catatonit, given, record.cgroup_path,
                                                                record.sandbox_dir, self._place_infra(record)))
            record.infra_pid, record.infra_start_time, record.infra_parent_pid = infra
            undo.push("infra process", lambda: host.stop_infra(*infra))
        try:  # so that reconciliation after a crash knows the cgroups and the infra to remove
            await asyncio.wrap_future(self._t.store.save(record, durable=False))
        except OSError as e:
            raise StepFailed("saving the sandbox record", e) from e

    def _unpin_all(self, ns_dir: Path, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self._t.host.unpin_namespace(ns_dir / kind)

    def _prepare_local(self, record: SandboxRecord, resolv: str, undo: UndoStack) -> None:
        host = self._t.host
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
                undo.push("shm mount", lambda: host.unmount(record.shm_path))
                host.mount_shm(Path(record.shm_path))
            if self._t.cgroups.name == "cgroupfs":  # under systemd the infra's scope is the pod cgroup
                step = "creating the pod cgroup"
                record.cgroups_created = host.create_cgroup(record.cgroup_path)
                undo.push("pod cgroup", lambda: host.remove_cgroups(record.cgroups_created))
        except (OSError, CRIError) as e:
            raise StepFailed(step, e) from e

    def _place_infra(self, record: SandboxRecord) -> Callable[[int], Awaitable[None]]:
        """How the infra's parent enters the pod cgroup: moved into the directory made before (cgroupfs), or put
        in a new transient scope, which is then the pod cgroup (systemd)."""
        if self._t.cgroups.name == "cgroupfs":
            return lambda pid: asyncio.to_thread(self._t.host.move_to_cgroup, pid, record.cgroup_path)
        return lambda pid: self._t.cgroups.place(pid, record.cgroup_path, f"pycri infra of pod {record.id}")
