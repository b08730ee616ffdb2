"""The container manager: create, start, stop, remove, status, list, exec, update, logs, stats and events.

States (written down as data below) move one way: creating -> created -> running -> exited. Records are saved
before the host is changed, so a crash leaves a record that names what to undo. Each container has its own lock;
no lock is held across containers. Exits arrive from conmon's exit files through an inotify watcher and are
applied without the lock (one synchronous update on the event loop), so a stop waiting for an exit cannot
deadlock with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cri.core import events as ev, sandbox_host
from cri.core.claims import Claims
from cri.core.undo import UndoStack, restore_or_undo
from cri.core.streams import container_process, exec_process
from cri.errors import CRIError, FailedPrecondition, Internal, InvalidArgument, NotFound
from cri.faults import crash_point
from cri.oci import host_facts, mounts as oci_mounts, spec as oci_spec
from cri.oci.conmon import BundlePaths, Conmon
from cri.oci.exitwatch import ExitWatcher, read_exit_status
from cri.oci.reaper import Reaper
from cri.oci.rootfs import RootfsPathError, ensure_mount_points, ensure_rootfs_dir, read_rootfs_file
from cri.oci.runtime import OCIRuntime, OCIRuntimeError
from cri.oci.users import UserRequest, UserResolutionError, resolve_user
from cri.state.container_record import ContainerRecord, ContainerRequest, ResourcesSpec
from cri.state.ids import new_id, valid_id
from cri.state.index import Index, NameRegistry
from cri.state.store import RecordStore
from hostos import cgroups, netdev
from hostos.atomicfile import atomic_write_bytes

log = logging.getLogger(__name__)

# CRI state names, and which moves each RPC may make.
CRI_STATE = {"creating": 0, "created": 0, "running": 1, "exited": 2}
STARTABLE = {"created"}
EXEC_STATES = {"running"}
MODE_NAMES = {0: "POD", 1: "CONTAINER", 2: "NODE", 3: "TARGET"}
KILL_WAIT = 10.0  # after SIGKILL, how long conmon may take to report the exit
LOG_REOPEN_WAIT = 5.0
MONITOR_EXIT_WAIT = 2.0  # after the container's exit, how long conmon may take to drain its output and leave


@dataclass
class ContainerStats:
    record: ContainerRecord
    cgroup: cgroups.Stats
    usage_nano_cores: int | None
    writable_bytes: int
    writable_inodes: int


@dataclass
class PodStats:
    cgroup: cgroups.Stats
    usage_nano_cores: int | None
    network: list[netdev.InterfaceStats]
    containers: list[ContainerStats]


def _is_monitor_of(pid: int, container_id: str) -> bool:
    """The pid still belongs to this container's conmon (not to a process that reused the number)."""
    try:
        return container_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


async def _monitor_gone(pid: int, container_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_monitor_of(pid, container_id):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _mtime_ns(path: Path) -> int:
    """When a file last changed (an exit file: the exit; a runtime state dir: the start); now if it is gone."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return time.time_ns()


def _bundle_cgroups(bundle: Path, container_id: str) -> list[str]:
    """The container's and its conmon's cgroups, from the bundle's config.json (for orphans, which have no record)."""
    try:
        path = json.loads(BundlePaths(bundle).config.read_text())["linux"]["cgroupsPath"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
        return []
    return [path, f"{os.path.dirname(path.rstrip('/'))}/pycri-conmon-{container_id}"]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pod_root_ids(sandbox) -> tuple[int, int]:
    """The host uid and gid of the root of the pod's user namespace."""
    opts = sandbox.namespace_options
    return opts.uid_mappings[0].host_id, opts.gid_mappings[0].host_id


def _user_namespace(sec, sandbox) -> dict:
    """A container of a pod with its own user namespace joins it, with the pod's mappings; no other one may."""
    mode = MODE_NAMES.get(sec.userns_mode, str(sec.userns_mode))
    if mode in ("CONTAINER", "TARGET"):
        raise InvalidArgument(f"user namespace mode {mode} is not supported: a container uses its pod's (POD) "
                              f"or the host's (NODE)")
    opts = sandbox.namespace_options
    if not sandbox.userns_path:
        if mode == "POD":
            raise InvalidArgument(f"the container asks for its pod's user namespace, but pod sandbox {sandbox.id} "
                                  f"has none: create the pod with userns_options mode POD")
        return {"userns_mode": "NODE"}
    for mine, pods, kind in ((sec.uid_mappings, opts.uid_mappings, "uid"),
                             (sec.gid_mappings, opts.gid_mappings, "gid")):
        if mine and tuple(mine) != tuple(pods):
            raise InvalidArgument(f"the container's {kind} mappings differ from those of its pod's user namespace")
    return {"userns_mode": "POD", "userns_path": sandbox.userns_path,
            "uid_mappings": list(_id_maps(opts.uid_mappings)), "gid_mappings": list(_id_maps(opts.gid_mappings))}


def _id_maps(mappings) -> tuple[oci_spec.IDMap, ...]:
    return tuple(oci_spec.IDMap(m.container_id, m.host_id, m.length) for m in mappings)


def _background(work, what: str) -> asyncio.Future:
    """A task whose failure is logged even if nobody ever awaits it (whoever does still gets the exception)."""
    task = asyncio.ensure_future(work)

    def report(done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.warning("%s failed: %s", what, done.exception())

    task.add_done_callback(report)
    return task


def signal_number(name: str) -> int:
    """"SIGTERM", "TERM", "15" or "SIGRTMIN+3" -> the number; InvalidArgument when unknown."""
    if not name:
        return int(signal.SIGTERM)
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text.startswith("SIGRTMIN+") and text[9:].isdigit():
        return int(signal.SIGRTMIN) + int(text[9:])
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidArgument(f"unknown stop signal {name!r}") from None


def container_log_path(log_directory: str, log_path: str) -> str:
    """The log file kubelet asked for: relative to the pod's log directory, and never outside it."""
    if not log_path:
        return ""
    joined = os.path.normpath(os.path.join(log_directory, log_path))
    if log_directory and not joined.startswith(os.path.normpath(log_directory).rstrip("/") + "/"):
        raise InvalidArgument(f"log path {log_path!r} leaves the pod's log directory {log_directory!r}")
    if not os.path.isabs(joined):
        raise InvalidArgument(f"log path {log_path!r} is relative and the pod has no log directory")
    return joined


def exit_reason(exit_code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


class ContainerManager:
    def __init__(self, config, sandboxes, images, bus: ev.EventBus):
        self.config = config
        self.sandboxes = sandboxes
        self.images = images
        self.events = bus
        self._store = RecordStore(Path(config.root) / "containers", ContainerRecord)
        self._dir = Path(config.state_dir) / "containers"
        self._exit_dir = Path(config.state_dir) / "exits"
        self._index: Index[ContainerRecord] = Index("container")
        self._names = NameRegistry("container")
        self._claims = Claims(self._names, self._index)
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._runtimes: dict[str, OCIRuntime] = {}
        self._conmon = Conmon(config.runtime.conmon, self._exit_dir)
        self._watcher = ExitWatcher(self._exit_dir, self._on_exit_file)
        self._reaper = Reaper(self._on_monitor_exit)
        self._monitors: dict[int, str] = {}  # conmon pid -> container id
        self._cpu_samples: dict[str, tuple[int, int]] = {}
        self._deleting: dict[str, asyncio.Future] = {}
        self._spawning: dict[str, asyncio.Future] = {}
        self._starting: set[str] = set()
        self._in_flight: dict[str, set[asyncio.Event]] = {}  # sandbox id -> its CreateContainers still running
        self._closing: set[str] = set()  # sandboxes being stopped or removed: no new container may start creating

    # --- lifetime ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load records and reconcile them with the runtimes and conmon's exit files; remove orphans; watch."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._watcher.start()
        records = self._store.load_all()
        live = await self._runtime_containers()
        for record in records:
            if not await restore_or_undo(record, "container", self._names, self._index, self._destroy):
                continue
            if record.state in ("created", "running"):
                handler = record.runtime_handler or self.config.runtime.default_runtime
                await self._reconcile(record, live.get(handler))
            if record.state == "created":  # its CreateContainer's reply may have been lost with the daemon
                self._claims.abandon(record.reserved_name)
        await self._remove_orphans(live)
        self.sandboxes.set_container_hooks(self.stop_all_in_sandbox, self.remove_all_in_sandbox)
        self.images.set_in_use(self.image_in_use)

    async def _runtime_containers(self) -> dict[str, dict[str, dict]]:
        """handler -> {id: the runtime's `list` entry}, for every handler whose runtime could list its root.

        A handler missing here knows nothing: its containers are not taken for gone.
        """
        found: dict[str, dict[str, dict]] = {}
        for name in self.config.runtime.handlers:
            try:
                found[name] = {entry.get("id", ""): entry for entry in await self.runtime(name).list()}
            except (CRIError, OCIRuntimeError, ValueError) as e:
                log.warning("listing the containers of runtime handler %s: %s", name, e)
        return found

    async def _reconcile(self, record: ContainerRecord, listed: dict[str, dict] | None) -> None:
        """Make a created/running record tell the truth the runtime and conmon know after the daemon's absence.

        ``listed`` is its runtime's containers, None when the runtime could not say.
        """
        if read_exit_status(self._conmon.exit_file(record.id)) is not None:
            self._apply_exit(record)
            return
        entry = listed.get(record.id) if listed is not None else None
        status = entry.get("status") if entry else None
        monitor_alive = _is_monitor_of(record.conmon_pid, record.id) if record.conmon_pid else False
        if record.state == "created" and not record.pid:  # the daemon died inside the runtime create
            conmon_pid = _read_pid(BundlePaths(Path(record.bundle)).conmon_pid_file)
            if status == "created" and conmon_pid and _is_monitor_of(conmon_pid, record.id):
                log.info("container %s: finishing its create, interrupted by the daemon's stop", record.id)
                record.pid, record.conmon_pid = int(entry.get("pid") or 0), conmon_pid
                self._save(record)
                self._watch_monitor(record)
                return
            log.warning("container %s: its create was interrupted by the daemon's stop; undoing it", record.id)
            if conmon_pid and _is_monitor_of(conmon_pid, record.id):
                _kill(conmon_pid)
            self._record_exit(record, 128, "StartError", time.time_ns(),
                              "the daemon stopped while the container was being created")
            return
        if listed is not None and entry is None:
            log.warning("container %s: gone from runtime %s while the daemon was down", record.id,
                        record.runtime_handler)
            self._record_exit(record, 255, "Error", time.time_ns(),
                              "the container was gone when pycri restarted (the host rebooted, or it was "
                              "deleted outside pycri); its exit status is unknown")
            return
        if not monitor_alive:  # conmon died while we were down, without writing an exit
            _background(self._monitor_lost(record), f"handling the lost monitor of {record.id}")
            return
        if record.state == "created" and status in ("running", "paused"):  # started, then the daemon died
            record.state = "running"
            record.started_at = _mtime_ns(self.runtime(record.runtime_handler).root / record.id)
            self._save(record)
        self._watch_monitor(record)

    async def _remove_orphans(self, live: dict[str, dict[str, dict]]) -> None:
        """What a crash left with no record: bundles and what they name, rootfs mounts, exit files."""
        known = {r.id for r in self._index}
        for path in sorted(self._dir.iterdir()):
            if path.is_dir() and valid_id(path.name) and path.name not in known:
                await self._remove_orphan(path.name, live)
        for name in set(self.images.rootfs_ids()) - known:
            log.warning("removing orphan rootfs of container %s (no record)", name)
            try:
                for sandbox in self.sandboxes.list():  # a user-namespaced pod may hold a bind of it
                    if sandbox.userns_path and sandbox_host.exposed_rootfs(sandbox.sandbox_dir, name).exists():
                        await asyncio.to_thread(sandbox_host.unexpose_rootfs, sandbox.sandbox_dir, name)
                await self.images.remove_rootfs(name)
            except Exception as e:
                log.error("removing orphan rootfs %s: %s", name, e)
        for path in self._exit_dir.iterdir():
            if path.name.split(".")[0] not in known:
                log.info("removing stale exit file %s", path)
                path.unlink(missing_ok=True)

    async def _remove_orphan(self, container_id: str, live: dict[str, dict[str, dict]]) -> None:
        """A bundle with no record: kill its conmon, delete its runtime container, remove its cgroups and itself.

        Only a runtime container whose bundle we made counts as ours; conmon goes first, so that it writes no
        exit file for the delete.
        """
        bundle = self._dir / container_id
        log.warning("removing orphan container %s (a bundle with no record)", container_id)
        conmon_pid = _read_pid(BundlePaths(bundle).conmon_pid_file)
        if conmon_pid and _is_monitor_of(conmon_pid, container_id):
            _kill(conmon_pid)
            await _monitor_gone(conmon_pid, container_id, KILL_WAIT)
        for handler, listed in live.items():
            if container_id in listed:
                try:
                    await self.runtime(handler).delete(container_id, force=True)
                except OCIRuntimeError as e:
                    log.error("removing orphan container %s from runtime %s: %s", container_id, handler, e)
        for path in _bundle_cgroups(bundle, container_id):
            failed = await asyncio.to_thread(cgroups.remove, path)
            if failed:
                log.error("orphan container %s: cgroups not removed: %s", container_id, failed)
        shutil.rmtree(bundle, ignore_errors=True)

    async def stop(self) -> None:
        """Containers outlive the daemon: finish the creates and deletes in flight, then stop watching."""
        pending = [*self._spawning.values(), *self._deleting.values()]
        if pending:
            await asyncio.wait(pending, timeout=30)
        self._watcher.stop()
        self._reaper.close()

    def image_in_use(self, image_id: str) -> bool:
        return any(r.image_id == image_id for r in self._index)

    # --- helpers ----------------------------------------------------------------------------------------

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def forget_runtime(self, handler: str) -> None:
        """A reload changed the handler's definition: the next use builds its runtime anew."""
        self._runtimes.pop(handler, None)

    def runtime(self, handler: str) -> OCIRuntime:
        name = handler or self.config.runtime.default_runtime
        rt = self._runtimes.get(name)
        if rt is None:
            spec = self.config.runtime.handlers.get(name)
            if spec is None:
                raise InvalidArgument(f"runtime handler {name!r} is not configured")
            path = shutil.which(spec.path)
            if path is None:
                raise FailedPrecondition(f"runtime handler {name!r}: {spec.path} is not installed")
            root = spec.runtime_root or Path(self.config.state_dir) / "runtimes" / name
            rt = self._runtimes[name] = OCIRuntime(name, path, root)
        return rt

    def get(self, ref: str) -> ContainerRecord:
        return self._index.get(ref)

    def find(self, ref: str) -> ContainerRecord | None:
        return self._index.find(ref)

    def _save(self, record: ContainerRecord) -> None:
        # Not fsynced: a killed daemon keeps the page cache; reconciliation covers the rest.
        self._store.save(record, durable=False)

    def _publish(self, record: ContainerRecord, kind: int) -> None:
        self.events.publish(ev.ContainerEvent(record.id, record.sandbox_id, kind, time.time_ns()))

    # --- create -----------------------------------------------------------------------------------------

    async def create(self, request: ContainerRequest) -> ContainerRecord:
        """Create, counted as in flight in its sandbox: StopPodSandbox and RemovePodSandbox wait for it, so a
        container never outlives (or is made in) a pod torn down meanwhile."""
        sandbox_id = self.sandboxes.get(request.sandbox_id).id
        if sandbox_id in self._closing:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is being stopped")
        done = asyncio.Event()
        self._in_flight.setdefault(sandbox_id, set()).add(done)
        try:
            return await self._create(request)
        finally:
            done.set()
            self._in_flight[sandbox_id].discard(done)
            if not self._in_flight[sandbox_id]:
                del self._in_flight[sandbox_id]

    async def _create(self, request: ContainerRequest) -> ContainerRecord:
        sandbox = self.sandboxes.get(request.sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready (state {sandbox.state})")
        if not request.name:
            raise InvalidArgument("container metadata name must not be empty")
        image = self.images.status(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found")
        self._check_lsm(request)
        reserved = self._reserved_name(request, sandbox)
        asked = request.model_dump(mode="json")
        claimed = await self._claims.claim(reserved, lambda r: r.state == "created", lambda r: r.request == asked)
        if claimed is not None:
            log.info("container %s: handing the result of an unanswered CreateContainer to its retry", claimed.id)
            return claimed
        handler = sandbox.runtime_handler or self.config.runtime.default_runtime
        runtime = self.runtime(handler)
        await self._check_recursive_read_only(request, handler, runtime)
        await self._check_idmapped_mounts(request, sandbox, handler, runtime)
        container_id = new_id()
        bundle = self._dir / container_id
        parent = (sandbox.cgroup_parent or "/pycri").rstrip("/")
        log_path = container_log_path(sandbox.log_directory, request.log_path)
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, name=request.name, attempt=request.attempt,
            reserved_name=reserved, created_at=time.time_ns(), image=request.image,
            image_ref=(image.repo_digests[0] if image.repo_digests else image.id), image_id=image.id,
            runtime_handler=handler, bundle=str(bundle), log_path=log_path,
            cgroups_path=f"{parent}/pycri-{container_id}", conmon_cgroup=f"{parent}/pycri-conmon-{container_id}",
            stop_signal=request.stop_signal or image.stop_signal,
            labels=request.labels, annotations=request.annotations, mounts=request.mounts,
            resources=request.resources, tty=request.tty, stdin=request.stdin, stdin_once=request.stdin_once,
            request=asked)
        self._names.reserve(reserved, container_id)
        undo = UndoStack()
        undo.push("release the name", lambda: self._names.release(reserved, container_id))
        with self._claims.creating(reserved):
            try:
                self._save(record)
                undo.push("delete the record", lambda: self._store.delete(container_id))
                crash_point("container.create.after_record")
                bundle.mkdir(mode=0o700)
                undo.push("remove the bundle", lambda: shutil.rmtree(bundle, ignore_errors=True))
                rootfs = await self.images.create_rootfs(container_id, image.id)  # storage errors map themselves
                undo.push("remove the rootfs", lambda: self.images.remove_rootfs(container_id))
                crash_point("container.create.after_rootfs")
                record.rootfs = str(rootfs.path)
                root = rootfs.path
                if sandbox.userns_path:  # the runtime reaches the rootfs from inside the pod's user namespace
                    root = await asyncio.to_thread(sandbox_host.expose_rootfs, sandbox.sandbox_dir, container_id,
                                                   rootfs.path, _pod_root_ids(sandbox))
                    undo.push("unbind the rootfs",
                              lambda: sandbox_host.unexpose_rootfs(sandbox.sandbox_dir, container_id))
                spec = await asyncio.to_thread(self._build_spec, record, request, sandbox, image, root)
                if sandbox.userns_path:
                    try:
                        await asyncio.to_thread(ensure_mount_points, root, spec["mounts"])
                    except RootfsPathError as e:
                        raise InvalidArgument(f"creating the mount points in the rootfs: {e}") from e
                atomic_write_bytes(BundlePaths(bundle).config, json.dumps(spec).encode(), durable=False)
                if log_path:
                    os.makedirs(os.path.dirname(log_path), exist_ok=True)
                record.state = "created"
                self._save(record)
            except BaseException:
                await undo.unwind()
                raise
        self._index.add(container_id, record)
        # conmon + `runtime create` cost ~20 ms with runc: they run while the reply travels and the caller
        # prepares StartContainer, which waits for them (see _spawned). Measured on this machine: create+start
        # is the same total either way, but each call alone is then below both containerd's and CRI-O's.
        self._spawning[container_id] = _background(self._spawn(record, runtime, request), f"creating {container_id}")
        self._publish(record, ev.CREATED)
        return record

    async def _spawn(self, record: ContainerRecord, runtime: OCIRuntime, request: ContainerRequest) -> None:
        """Start conmon, which runs `runtime create`; on failure the container ends as exited (StartError)."""
        try:
            created = await self._conmon.create_container(
                runtime, record.id, Path(record.bundle), record.log_path, request.name,
                stdin=request.stdin, stdin_once=request.stdin_once, tty=request.tty,
                log_size_max=self.config.runtime.log_size_max, cgroup=record.conmon_cgroup)
        except Exception as e:
            if record.state == "created":
                record.state, record.exit_code, record.reason = "exited", 128, "StartError"
                record.message = str(e)
                record.finished_at = time.time_ns()
                self._save(record)
                self._publish(record, ev.STOPPED)
            raise
        crash_point("container.create.after_runtime")
        record.pid, record.conmon_pid = created.pid, created.conmon_pid
        self._save(record)
        self._watch_monitor(record)

    @staticmethod
    def _reserved_name(request: ContainerRequest, sandbox) -> str:
        return f"{request.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_{request.attempt}"

    def mark_abandoned(self, request: ContainerRequest) -> None:
        """The caller gave up before CreateContainer returned: its retry gets that container, not 'name is
        reserved'."""
        sandbox = self.sandboxes.find(request.sandbox_id)
        if sandbox is not None:
            self._claims.abandon(self._reserved_name(request, sandbox))

    async def _spawned(self, record: ContainerRecord) -> None:
        """Wait for the runtime create started by CreateContainer; raise its error, once, if it failed."""
        pending = self._spawning.pop(record.id, None)
        if pending is None:
            return
        try:
            await pending
        except Exception as e:
            raise FailedPrecondition(f"container {record.id} could not be created: {e}") from e

    @staticmethod
    async def _check_recursive_read_only(request: ContainerRequest, handler: str, runtime: OCIRuntime) -> None:
        """Refuse rro up front where the runtime lacks it: an older runtime ignores the option and leaves the
        submounts writable."""
        wanted = [m.container_path for m in request.mounts if m.recursive_read_only]
        if wanted and not await oci_mounts.supports_rro(runtime.path):
            raise InvalidArgument(
                f"mount {wanted[0]}: recursive read-only mounts are not supported by runtime handler {handler!r} "
                f"({runtime.path}) on this host (it needs Linux 5.12+ and runc 1.1+ or crun 1.8+); "
                f"set recursive_read_only to false or use a handler that supports it")

    @staticmethod
    async def _check_idmapped_mounts(request: ContainerRequest, sandbox, handler: str, runtime: OCIRuntime) -> None:
        """Refuse a mount's uid/gid mappings up front where the runtime cannot idmap: runc 1.1 ignores them, and
        the volume would show host ids (nobody, or a stranger's files) inside the pod. (Mappings in a pod without
        a user namespace are refused by the spec.)"""
        wanted = [m.container_path for m in request.mounts if m.uid_mappings or m.gid_mappings]
        if not wanted or not sandbox.userns_path:
            return
        if not await oci_mounts.supports_idmap(runtime.path):
            raise InvalidArgument(
                f"mount {wanted[0]}: idmapped mounts (uid/gid mappings) are not supported by runtime handler "
                f"{handler!r} ({runtime.path}) on this host (it needs Linux 5.12+ and crun 1.8.1+ or runc 1.2+); "
                f"run the pod with a handler that supports them, or without mappings on its mounts")
        pid_mode = MODE_NAMES.get(request.security.pid_mode, "CONTAINER")
        if pid_mode in ("POD", "TARGET"):
            # crun 1.8 makes the idmapped mount after joining an existing PID namespace, inside the user
            # namespace, where the kernel refuses it (EPERM from mount_setattr).
            raise InvalidArgument(
                f"mount {wanted[0]}: idmapped mounts are not supported in a container that joins an existing PID "
                f"namespace (mode {pid_mode}) with runtime handler {handler!r}; use PID namespace mode CONTAINER "
                f"(no shareProcessNamespace) or no mappings on its mounts")

    def _check_lsm(self, request: ContainerRequest) -> None:
        sec = request.security
        if sec.apparmor == "localhost" and not host_facts.apparmor_enabled():
            raise FailedPrecondition(
                f"AppArmor profile {sec.apparmor_localhost!r} was asked for, but AppArmor is not enabled on this host")

    def _build_spec(self, record: ContainerRecord, request: ContainerRequest, sandbox, image, rootfs: Path) -> dict:
        """Everything that reads the host or the image, then the pure spec function (runs in a thread)."""
        sec = request.security
        try:
            user = resolve_user(
                UserRequest(run_as_user=sec.run_as_user, run_as_username=sec.run_as_username,
                            run_as_group=sec.run_as_group, supplemental_groups=tuple(sec.supplemental_groups),
                            strict_supplemental_groups=sec.strict_supplemental_groups, image_user=image.user),
                read_rootfs_file(rootfs, "/etc/passwd"), read_rootfs_file(rootfs, "/etc/group"))
            for volume in image.volumes:
                ensure_rootfs_dir(rootfs, volume)
        except (UserResolutionError, RootfsPathError) as e:
            raise InvalidArgument(str(e)) from e
        record.uid, record.gid = user.uid, user.gid
        record.supplemental_groups = list(user.additional_gids)
        opts = sandbox.namespace_options
        pid_mode = MODE_NAMES.get(sec.pid_mode, "CONTAINER")
        target_pid = 0
        if pid_mode == "TARGET":
            target = self._index.find(sec.target_id)
            if target is None or target.state != "running":
                raise NotFound(f"target container {sec.target_id!r} for the pid namespace is not running")
            target_pid = target.pid
        problems = oci_mounts.host_propagation_problems([(m.host_path, m.propagation) for m in request.mounts])
        if problems:
            raise FailedPrecondition(problems[0])
        devices = []
        for device in request.devices:
            found = host_facts.device_request(device.host_path, device.container_path, device.permissions)
            if found is None:
                raise InvalidArgument(f"device {device.host_path!r} is not a device node on this host")
            devices.append(found)
        profile = None
        seccomp_kind = sec.seccomp
        if seccomp_kind == "runtime/default" and self.config.runtime.seccomp_profile:
            seccomp_kind, profile = "localhost", self._load_profile(str(self.config.runtime.seccomp_profile))
        elif seccomp_kind == "localhost" and not sec.privileged:
            profile = self._load_profile(sec.seccomp_localhost)
        r = request.resources
        inputs = oci_spec.ContainerInputs(
            container_id=record.id, rootfs=str(rootfs), command=request.command, args=request.args,
            image_entrypoint=image.entrypoint, image_cmd=image.cmd, image_env=image.env, envs=request.envs,
            working_dir=request.working_dir, image_working_dir=image.working_dir, tty=request.tty,
            stdin=request.stdin, user=user, hostname=sandbox.hostname, readonly_rootfs=sec.readonly_rootfs,
            mounts=[oci_spec.MountRequest(m.container_path, m.host_path, m.readonly, m.propagation,
                                          m.recursive_read_only, _id_maps(m.uid_mappings), _id_maps(m.gid_mappings))
                    for m in request.mounts],
            devices=devices, host_devices=host_facts.host_devices() if sec.privileged else [],
            hosts_path=sandbox.hosts_path, resolv_path=sandbox.resolv_conf_path, hostname_path=sandbox.hostname_path,
            shm_path=sandbox.shm_path,
            network_mode="NODE" if opts.host_network else "POD", ipc_mode="NODE" if opts.host_ipc else "POD",
            pid_mode=pid_mode, netns_path=sandbox.netns_path, ipcns_path=sandbox.ipc_path,
            utsns_path=sandbox.uts_path, pod_pid=sandbox.infra_pid, target_pid=target_pid,
            **_user_namespace(sec, sandbox),
            privileged=sec.privileged, add_capabilities=sec.add_capabilities,
            drop_capabilities=sec.drop_capabilities, add_ambient_capabilities=sec.add_ambient_capabilities,
            host_capabilities=host_facts.daemon_capabilities(),
            default_capabilities=tuple("CAP_" + c for c in self.config.runtime.default_capabilities),
            no_new_privs=sec.no_new_privs, seccomp=seccomp_kind, seccomp_localhost_profile=profile,
            masked_paths=sec.masked_paths, readonly_paths=sec.readonly_paths,
            resources=self._resources(r), oom_score_adj_floor=host_facts.oom_score_adj_floor(),
            swap_accounting=cgroups.swap_accounting(), cgroups_path=record.cgroups_path,
            annotations={**request.annotations, "io.kubernetes.cri.container-name": request.name,
                         "io.kubernetes.cri.sandbox-id": sandbox.id, "io.kubernetes.cri.container-type": "container"},
        )
        try:
            return oci_spec.container_spec(inputs)
        except oci_spec.SpecError as e:
            raise InvalidArgument(str(e)) from e

    def _resources(self, r: ResourcesSpec) -> oci_spec.Resources:
        return oci_spec.Resources(
            cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares, cpuset_cpus=r.cpuset_cpus,
            cpuset_mems=r.cpuset_mems, memory_limit=r.memory_limit_in_bytes,
            memory_swap_limit=r.memory_swap_limit_in_bytes, oom_score_adj=r.oom_score_adj,
            hugepage_limits=tuple((size, limit) for size, limit in r.hugepage_limits), unified=r.unified,
            pids_limit=self.config.runtime.pids_limit)

    @staticmethod
    def _load_profile(path: str) -> dict:
        if not path or not os.path.isabs(path):
            raise InvalidArgument(f"localhost seccomp profile path {path!r} must be absolute")
        try:
            with open(path, "rb") as f:
                return json.loads(f.read(1 << 20))
        except FileNotFoundError:
            raise NotFound(f"seccomp profile {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"seccomp profile {path} cannot be read: {e}") from None

    # --- start / exit -----------------------------------------------------------------------------------

    async def start_container(self, ref: str) -> None:
        record = self.get(ref)
        async with self._lock(record.id):
            await self._spawned(record)
            if record.state not in STARTABLE:
                raise FailedPrecondition(f"container {record.id} is {record.state}, only a created one can start")
            self._starting.add(record.id)
            try:
                await self.runtime(record.runtime_handler).start(record.id)
            except OCIRuntimeError as e:
                raise Internal(f"starting container {record.id}: {e}") from e
            finally:
                self._starting.discard(record.id)
            crash_point("container.start.after_runtime")
            if record.state == "created":  # else an immediate exit was applied, and marked the start first
                self._mark_running(record)

    def _mark_running(self, record: ContainerRecord) -> None:
        record.state = "running"
        record.started_at = time.time_ns()
        self._save(record)
        self._publish(record, ev.STARTED)

    def _watch_monitor(self, record: ContainerRecord) -> None:
        self._monitors[record.conmon_pid] = record.id
        self._reaper.watch(record.conmon_pid)

    def _on_monitor_exit(self, pid: int) -> None:
        """conmon writes the exit file before it exits; if there is none, it died on its own."""
        record = self._index.find(self._monitors.pop(pid, ""))
        if record is None or record.state not in ("created", "running"):
            return
        if self._conmon.exit_file(record.id).exists():
            self._apply_exit(record)
        else:
            _background(self._monitor_lost(record), f"handling the lost monitor of {record.id}")

    async def _monitor_lost(self, record: ContainerRecord) -> None:
        """Without conmon nobody collects the container's output or exit: kill it and say why."""
        log.error("container %s: its monitor (conmon pid %d) died; killing the container", record.id,
                  record.conmon_pid)
        if _is_alive(record.pid):
            # conmon was its parent; as the subreaper we inherit it and must reap it, or the pod's pid
            # namespace cannot end.
            self._reaper.watch(record.pid)
        try:
            await self.runtime(record.runtime_handler).kill(record.id, signal.SIGKILL, all_processes=True)
        except OCIRuntimeError as e:
            log.debug("SIGKILL to %s: %s", record.id, e)
        if record.state not in ("created", "running") or self._conmon.exit_file(record.id).exists():
            return
        record.message = f"the container's monitor (conmon pid {record.conmon_pid}) died; the container was killed"
        exit_file = self._conmon.exit_file(record.id)
        atomic_write_bytes(exit_file, b"137", durable=False)
        self._apply_exit(record)

    def _on_exit_file(self, container_id: str) -> None:
        record = self._index.find(container_id) if len(container_id) == 64 else None
        if record is not None and record.state in ("created", "running"):
            self._apply_exit(record)

    def _apply_exit(self, record: ContainerRecord) -> None:
        """Record an exit conmon reported; synchronous, so it needs no lock."""
        exit_file = self._conmon.exit_file(record.id)
        code = read_exit_status(exit_file)
        if code is None:
            return
        oom = BundlePaths(Path(record.bundle)).oom_file.exists()
        self._record_exit(record, code, exit_reason(code, oom), _mtime_ns(exit_file))

    def _record_exit(self, record: ContainerRecord, code: int, reason: str, finished: int, message: str = "") -> None:
        if record.id in self._starting and record.state == "created":
            self._mark_running(record)  # it exited before `runtime start` returned: started, then stopped
        if record.started_at == 0 or record.started_at > finished:  # our start stamp came after its exit
            record.started_at = finished
        record.state = "exited"
        record.finished_at = finished
        record.exit_code = code
        record.reason = reason
        if message:
            record.message = message
        self._save(record)
        self._cpu_samples.pop(record.id, None)
        # runc's delete of a stopped container takes ~15 ms (it waits for the cgroup to empty): do it now, in
        # the background, so RemoveContainer does not pay for it and the cgroup is freed at once.
        self._deleting[record.id] = _background(self._delete_runtime(record), f"deleting {record.id} after its exit")
        waiter = self._exited.pop(record.id, None)
        if waiter is not None:
            waiter.set()
        self._publish(record, ev.STOPPED)

    async def _wait_exit(self, record: ContainerRecord, timeout: float) -> bool:
        if record.state == "exited":
            return True
        waiter = self._exited.setdefault(record.id, asyncio.Event())
        if self._conmon.exit_file(record.id).exists():  # written before we started waiting
            self._apply_exit(record)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return record.state == "exited"
        return True

    # --- stop / remove ----------------------------------------------------------------------------------

    async def stop_container(self, ref: str, timeout: int) -> None:
        """Stop signal, then SIGKILL after ``timeout`` seconds; idempotent, and an unknown id is not an error."""
        record = self.find(ref)
        if record is None:
            return
        async with self._lock(record.id):
            await self._stop_locked(record, timeout)

    async def _stop_locked(self, record: ContainerRecord, timeout: float) -> None:
        try:
            await self._spawned(record)
        except FailedPrecondition:
            pass  # it never ran: nothing to stop
        if record.state not in ("created", "running"):
            return
        runtime = self.runtime(record.runtime_handler)
        if timeout > 0:
            try:
                await runtime.kill(record.id, signal_number(record.stop_signal))
            except OCIRuntimeError as e:
                log.debug("stop signal to %s: %s", record.id, e)
            crash_point("container.stop.after_signal")
            if await self._wait_exit(record, timeout):
                return
        try:
            await runtime.kill(record.id, signal.SIGKILL, all_processes=True)
        except OCIRuntimeError as e:
            log.debug("SIGKILL to %s: %s", record.id, e)
        if not await self._wait_exit(record, KILL_WAIT):
            raise Internal(f"container {record.id} did not exit {KILL_WAIT}s after SIGKILL")

    async def remove_container(self, ref: str) -> None:
        """Kill if running, then delete everything of the container; an unknown id is not an error."""
        record = self.find(ref)
        if record is None:
            return
        async with self._lock(record.id):
            if record.id not in self._index:
                return
            await self._stop_locked(record, 0)
            await self._destroy(record)
            self._index.remove(record.id)
            self._names.release(record.reserved_name, record.id)
        self._locks.pop(record.id, None)
        self._publish(record, ev.DELETED)

    async def _runtime_deleted(self, record: ContainerRecord) -> None:
        """Wait for the delete started at exit, or delete now if none ran or it failed."""
        pending = self._deleting.pop(record.id, None)
        if pending is not None:
            try:
                await pending
                return
            except Exception as e:
                log.warning("container %s: delete after exit failed (%s); retrying", record.id, e)
        await self._delete_runtime(record)

    async def _delete_runtime(self, record: ContainerRecord) -> None:
        if record.state == "exited":
            await asyncio.to_thread(cgroups.kill_all, record.cgroups_path)
        await self.runtime(record.runtime_handler).delete(record.id, force=True)
        # runc and crun leave the container's cgroup parents (and on v1 sometimes the cgroup) behind.
        failed = await asyncio.to_thread(cgroups.remove, record.cgroups_path)
        if failed:
            log.warning("container %s: cgroups not removed: %s", record.id, failed)

    async def _remove_rootfs(self, record: ContainerRecord) -> None:
        sandbox = self.sandboxes.find(record.sandbox_id)
        if sandbox is not None and sandbox.userns_path:  # (a removed sandbox took the bind with it)
            await asyncio.to_thread(sandbox_host.unexpose_rootfs, sandbox.sandbox_dir, record.id)
        await self.images.remove_rootfs(record.id)

    async def _destroy(self, record: ContainerRecord) -> None:
        """Undo everything a container may have; used by remove and for half-created records.

        The rootfs is mounted in the host's namespace, so runc's delete, the unmount and conmon's leaving are
        independent. The record goes last: a crash before that leaves it naming what is left to remove.
        """
        results = await asyncio.gather(self._runtime_deleted(record), self._remove_rootfs(record),
                                       self._retire_monitor(record), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise Internal(f"removing container {record.id}: {errors[0]}") from errors[0]
        crash_point("container.remove.after_runtime")
        if record.bundle:
            shutil.rmtree(record.bundle, ignore_errors=True)
        self._conmon.exit_file(record.id).unlink(missing_ok=True)
        self._store.delete(record.id)

    async def _retire_monitor(self, record: ContainerRecord) -> None:
        """conmon leaves once the container's output is drained; give it a moment, then remove its cgroup."""
        pid = record.conmon_pid
        if pid and not await _monitor_gone(pid, record.id, MONITOR_EXIT_WAIT):
            log.warning("container %s: conmon (pid %d) outlived its container; killing it", record.id, pid)
            _kill(pid)
            if not await _monitor_gone(pid, record.id, KILL_WAIT):
                raise Internal(f"conmon (pid {pid}) did not exit {KILL_WAIT}s after SIGKILL")
        if record.conmon_cgroup:
            failed = await asyncio.to_thread(cgroups.remove, record.conmon_cgroup)
            if failed:
                raise Internal(f"conmon's cgroups not removed: {failed}")

    async def _close(self, sandbox_id: str) -> None:
        """Refuse new creates in the sandbox and wait for those in flight, whose containers then count."""
        self._closing = {s for s in self._closing if self.sandboxes.find(s) is not None}  # forget removed ones
        self._closing.add(sandbox_id)
        await asyncio.gather(*(done.wait() for done in list(self._in_flight.get(sandbox_id, ()))))

    async def stop_all_in_sandbox(self, sandbox_id: str) -> None:
        await self._close(sandbox_id)
        records = [r for r in self._index if r.sandbox_id == sandbox_id]
        await asyncio.gather(*(self.stop_container(r.id, 0) for r in records))

    async def remove_all_in_sandbox(self, sandbox_id: str) -> None:
        await self._close(sandbox_id)
        records = [r for r in self._index if r.sandbox_id == sandbox_id]
        await asyncio.gather(*(self.remove_container(r.id) for r in records))

    # --- queries ----------------------------------------------------------------------------------------

    def list(self, id_prefix: str = "", state: int | None = None, sandbox_id: str = "",
             labels: dict[str, str] | None = None) -> list[ContainerRecord]:
        out = []
        for record in self._index:
            if record.state == "creating":
                continue
            if id_prefix and not record.id.startswith(id_prefix):
                continue
            if state is not None and CRI_STATE[record.state] != state:
                continue
            if sandbox_id and not record.sandbox_id.startswith(sandbox_id):
                continue
            if labels and any(record.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(record)
        return out

    def verbose_info(self, record: ContainerRecord) -> dict[str, str]:
        info = {
            "sandboxID": record.sandbox_id, "pid": record.pid, "conmonPid": record.conmon_pid,
            "runtimeHandler": record.runtime_handler, "bundle": record.bundle, "rootfs": record.rootfs,
            "cgroupsPath": record.cgroups_path, "request": record.request,
        }
        try:
            info["runtimeSpec"] = json.loads(BundlePaths(Path(record.bundle)).config.read_text())
        except (OSError, ValueError):
            pass
        return {"info": json.dumps(info)}

    # --- exec, update, logs -----------------------------------------------------------------------------

    async def exec_sync(self, ref: str, argv: list[str], timeout: float):
        record = self.get(ref)
        if record.state not in EXEC_STATES:
            raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
        if not argv:
            raise InvalidArgument("exec command must not be empty")
        pid_file = Path(record.bundle) / f"exec-{os.urandom(6).hex()}.pid"
        try:
            process = exec_process(container_process(Path(record.bundle)), argv, tty=False)
            return await self.runtime(record.runtime_handler).exec_sync(record.id, process, timeout, pid_file)
        except OCIRuntimeError as e:
            raise Internal(f"exec in container {record.id}: {e}") from e

    async def update_resources(self, ref: str, resources: ResourcesSpec) -> None:
        record = self.get(ref)
        async with self._lock(record.id):
            await self._spawned(record)
            if record.state not in ("created", "running"):
                raise FailedPrecondition(f"container {record.id} is {record.state}; only a live one can be updated")
            try:
                body = oci_spec.resources_object(self._resources(resources), swap_accounting=cgroups.swap_accounting())
            except oci_spec.SpecError as e:
                raise InvalidArgument(str(e)) from e
            try:
                await self.runtime(record.runtime_handler).update(record.id, body)
            except OCIRuntimeError as e:
                raise Internal(f"updating resources of {record.id}: {e}") from e
            record.resources = resources
            self._save(record)

    async def reopen_log(self, ref: str) -> None:
        record = self.get(ref)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running; its log cannot be reopened")
        log_path = Path(record.log_path) if record.log_path else None
        try:
            Conmon.reopen_log(Path(record.bundle))
        except OCIRuntimeError as e:
            raise Internal(str(e)) from e
        # conmon reopens asynchronously; the caller (kubelet's rotation) expects the new file once we return.
        deadline = time.monotonic() + LOG_REOPEN_WAIT
        while log_path is not None and not log_path.exists():
            if time.monotonic() > deadline:
                raise Internal(f"conmon did not reopen {log_path} within {LOG_REOPEN_WAIT}s")
            await asyncio.sleep(0.002)

    # --- stats ------------------------------------------------------------------------------------------

    async def stats(self, ref: str) -> ContainerStats:
        record = self.get(ref)
        return await self._stats(record)

    async def _stats(self, record: ContainerRecord) -> ContainerStats:
        sample = await asyncio.to_thread(cgroups.read_stats, record.cgroups_path)
        try:
            used, inodes = await self.images.writable_layer_usage(record.id)
        except Exception:
            used, inodes = 0, 0
        return ContainerStats(record, sample, self._nano_cores(record.id, sample), used, inodes)

    def _nano_cores(self, key: str, sample: cgroups.Stats) -> int | None:
        """CPU use rate since the previous sample of the same cgroup (kubelet asks every few seconds)."""
        if sample.cpu_usage_ns is None:
            return None
        previous = self._cpu_samples.get(key)
        self._cpu_samples[key] = (sample.timestamp_ns, sample.cpu_usage_ns)
        if previous is None or sample.timestamp_ns <= previous[0]:
            return None
        return max(0, (sample.cpu_usage_ns - previous[1]) * 1_000_000_000 // (sample.timestamp_ns - previous[0]))

    async def list_stats(self, id_prefix: str = "", sandbox_id: str = "",
                         labels: dict[str, str] | None = None) -> list[ContainerStats]:
        records = [r for r in self.list(id_prefix, None, sandbox_id, labels) if r.state in ("created", "running")]
        return list(await asyncio.gather(*(self._stats(r) for r in records)))

    async def sandbox_stats(self, sandbox) -> PodStats:
        """The pod cgroup's figures, its CPU rate, its network (not for host-network pods) and its containers."""
        sample = await asyncio.to_thread(cgroups.read_stats, sandbox.cgroup_parent or "/pycri")
        containers = await self.list_stats(sandbox_id=sandbox.id)
        network = []
        if sandbox.netns_path and sandbox.infra_pid:
            network = await asyncio.to_thread(netdev.network_stats, sandbox.infra_pid)
        return PodStats(sample, self._nano_cores("pod:" + sandbox.id, sample), network, containers)
