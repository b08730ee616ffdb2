"""CreateContainer: admission (the pod is ready and not being torn down), the record, bundle, rootfs and spec
written before anything else happens, then conmon and `runtime create` in the background.

The record is saved in state creating before the host is changed, so a crash leaves a record that names what to
undo; a failure undoes every step in reverse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cri.core import events as ev
from cri.core.images import ImageService
from cri.core.sandboxes import SandboxManager, host as sandbox_host
from cri.core.undo import UndoStack
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.faults import crash_point
from cri.observe import trace
from cri.oci import cdi, checkpoint as checkpoint_archive, restore as restore_archive
from cri.oci.checkpoint import ROOTFS_DIFF
from cri.oci.restore import Checkpoint
from cri.oci.conmon import BundlePaths
from cri.oci.rootfs import RootfsPathError, ensure_mount_points
from cri.oci.runtime import OCIRuntime
from cri.state.container_record import ContainerRecord, ContainerRequest
from cri.state.container_state import ContainerState
from cri.state.ids import new_id
from cri.state.sandbox_record import SandboxRecord
from hostos.atomicfile import atomic_write_bytes
from storage.errors import HostileLayer
from storage.image_records import ImageRecord
from storage.idmap import IdMap

from . import restore as restores, specgen
from .exits import Exits
from .procs import background
from .table import Table

log = logging.getLogger(__name__)


class Creator:
    def __init__(self, table: Table, sandboxes: SandboxManager, images: ImageService, exits: Exits) -> None:
        self._t = table
        self._sandboxes = sandboxes
        self._images = images
        self._exits = exits
        self._spawning: dict[str, asyncio.Future[Any]] = {}  # conmon + `runtime create` still running
        self._in_flight: dict[str, set[asyncio.Event]] = {}  # sandbox id -> its CreateContainers still running
        self._closing: set[str] = set()  # sandboxes being stopped or removed: no new container may start creating

    def pending(self) -> list[asyncio.Future[Any]]:
        return list(self._spawning.values())

    async def create(self, request: ContainerRequest) -> ContainerRecord:
        """Create, counted as in flight in its sandbox: StopPodSandbox and RemovePodSandbox wait for it, so a
        container never outlives (or is made in) a pod torn down meanwhile."""
        sandbox_id = self._sandboxes.get(request.sandbox_id).id
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

    async def close(self, sandbox_id: str) -> None:
        """Refuse new creates in the sandbox and wait for those in flight, whose containers then count."""
        self._closing = {s for s in self._closing if self._sandboxes.find(s) is not None}  # forget removed ones
        self._closing.add(sandbox_id)
        await asyncio.gather(*(done.wait() for done in list(self._in_flight.get(sandbox_id, ()))))

    async def _create(self, request: ContainerRequest) -> ContainerRecord:
        t = self._t
        sandbox = self._sandboxes.get(request.sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready (state {sandbox.state})")
        if not request.name:
            raise InvalidArgument("container metadata name must not be empty")
        handler = sandbox.runtime_handler or t.config.runtime.default_runtime
        ckpt: Checkpoint | None = None
        if request.image.startswith("/") and await asyncio.to_thread(checkpoint_archive.is_archive, request.image):
            ckpt = await restores.unpack(t, request.image, handler)
        else:
            image = self._images.status(request.image)
            if image is not None and restores.is_checkpoint_image(image):
                ckpt = await restores.unpack_image(t, self._images, request.image, image.id, handler)
        if ckpt is not None:
            try:
                restored = restores.restore_request(request, sandbox, request.image, ckpt,
                                                    self._images.status(ckpt.image_name) is not None)
                return await self._create_checked(restored, sandbox, ckpt, request.image)
            finally:
                shutil.rmtree(ckpt.dir, ignore_errors=True)  # moved into the bundle unless the create failed
        return await self._create_checked(request, sandbox, None, "")

    async def _create_checked(self, request: ContainerRequest, sandbox: SandboxRecord, ckpt: Checkpoint | None,
                              archive: str) -> ContainerRecord:
        t = self._t
        image = self._images.status(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found")
        mounts = [m.model_copy(update={"image_ref": _image_ref(self._images.status(m.image))}) if m.image else m
                  for m in request.mounts]
        apparmor_profile = await specgen.apparmor_profile(request, t.apparmor)
        cdi_edits: list[cdi.ContainerEdits] = []
        cdi_names = cdi.requested_devices(request.cdi_devices, request.annotations)
        if cdi_names:  # CDI devices first: an unknown one fails before anything is made
            try:
                cdi_edits = await asyncio.to_thread(cdi.resolve, cdi_names, t.config.runtime.cdi_spec_dirs)
            except cdi.CDIError as e:
                raise InvalidArgument(str(e)) from e
        reserved = specgen.reserved_name(request, sandbox)
        asked = request.model_dump(mode="json")
        claimed = await t.claims.claim(reserved, lambda r: r.state == ContainerState.CREATED,
                                       lambda r: r.request == asked)
        if claimed is not None:
            log.info("container %s: handing the result of an unanswered CreateContainer to its retry", claimed.id)
            return claimed
        handler = sandbox.runtime_handler or t.config.runtime.default_runtime
        runtime = t.runtime(handler)
        await specgen.check_recursive_read_only(request, handler, runtime)
        await specgen.check_idmapped_mounts(request, sandbox, handler, runtime)
        container_id = new_id()
        bundle = t.dir / container_id
        parent, cg = sandbox.cgroup_parent or t.cgroups.parent(""), t.cgroups
        log_path = specgen.container_log_path(sandbox.log_directory, request.log_path)
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, name=request.name, attempt=request.attempt,
            reserved_name=reserved, created_at=time.time_ns(), image=request.image,
            image_ref=_image_ref(image), image_id=image.id,
            runtime_handler=handler, bundle=str(bundle), log_path=log_path,
            cgroups_path=cg.child(parent, f"pycri-{container_id}"),
            conmon_cgroup=cg.child(parent, f"pycri-conmon-{container_id}"),
            stop_signal=request.stop_signal or image.stop_signal, apparmor_profile=apparmor_profile,
            labels=request.labels, annotations=request.annotations, mounts=mounts,
            resources=request.resources, tty=request.tty, stdin=request.stdin, stdin_once=request.stdin_once,
            request=asked)
        t.names.reserve(reserved, container_id)
        undo = UndoStack()
        undo.push("release the name", lambda: t.names.release(reserved, container_id))
        with t.claims.creating(reserved):
            try:
                await asyncio.wrap_future(t.save(record))  # a failed write fails the create
                undo.push("delete the record", lambda: asyncio.wrap_future(t.store.delete(container_id)))
                crash_point("container.create.after_record")
                bundle.mkdir(mode=0o700)
                undo.push("remove the bundle", lambda: shutil.rmtree(bundle, ignore_errors=True))
                if ckpt is not None:
                    os.rename(ckpt.dir, bundle / restores.RESTORE_DIR)
                    ckpt = dataclasses.replace(ckpt, dir=bundle / restores.RESTORE_DIR)
                    record.restore_from = archive
                with trace.phase("rootfs", pod=sandbox.id, subject=request.name):
                    try:
                        rootfs = await self._images.create_rootfs(  # storage errors map themselves
                            container_id, image.id, await self._rootfs_idmap(sandbox),
                            [m.image for m in request.mounts if m.image], ckpt.rootfs_diff if ckpt else None)
                    except HostileLayer as e:
                        raise InvalidArgument(f"checkpoint archive {archive}: {ROOTFS_DIFF}: {e}") from None
                undo.push("remove the rootfs", lambda: self._images.remove_rootfs(container_id))
                if ckpt is not None and ckpt.deleted:
                    await asyncio.to_thread(restore_archive.remove_deleted, rootfs.path, ckpt.deleted)
                crash_point("container.create.after_rootfs")
                record.rootfs = str(rootfs.path)
                root, volumes = rootfs.path, rootfs.volumes
                if sandbox.userns_path:  # the runtime reaches the rootfs from inside the pod's user namespace
                    root, volumes = await asyncio.to_thread(sandbox_host.expose_rootfs, sandbox.sandbox_dir,
                                                            container_id, rootfs.path, specgen.pod_root_ids(sandbox),
                                                            rootfs.volumes)
                    undo.push("unbind the rootfs",
                              lambda: sandbox_host.unexpose_rootfs(sandbox.sandbox_dir, container_id))
                with trace.phase("spec", pod=sandbox.id, subject=request.name):
                    spec = await asyncio.to_thread(specgen.build_spec, t.config, t.index.find, record, request,
                                                   sandbox, image, root, volumes, cdi_edits)
                    if sandbox.userns_path:
                        try:
                            await asyncio.to_thread(ensure_mount_points, root, spec["mounts"])
                        except RootfsPathError as e:
                            raise InvalidArgument(f"creating the mount points in the rootfs: {e}") from e
                    atomic_write_bytes(BundlePaths(bundle).config, json.dumps(spec).encode(), durable=False)
                if log_path:
                    os.makedirs(os.path.dirname(log_path), exist_ok=True)
                record.move(ContainerState.CREATED)
                # on disk before the reply: a daemon killed right after it must not undo a create it answered
                await asyncio.wrap_future(t.save(record))
            except BaseException:
                await undo.unwind()
                raise
        t.index.add(container_id, record)
        if record.restore_from:  # no `runtime create`: StartContainer restores the process (restore.py)
            t.publish(record, ev.CREATED)
            return record
        # conmon + `runtime create` cost ~20 ms with runc: they run while the reply travels and the caller
        # prepares StartContainer, which waits for them (see spawned). Measured on this machine: create+start
        # is the same total either way, but each call alone is then below both containerd's and CRI-O's.
        self._spawning[container_id] = background(self._spawn(record, runtime, request), f"creating {container_id}")
        t.publish(record, ev.CREATED)
        return record

    async def _rootfs_idmap(self, sandbox: SandboxRecord) -> IdMap | None:
        """The pod's own mapping for a user-namespaced pod's rootfs and image volumes, where the kernel can idmap
        them (the image's files are then its root's, as with containerd 2 and CRI-O); else None (they stay host
        root's, nobody's inside)."""
        if not sandbox.userns_path:
            return None
        problem = await self._images.idmap_problem()
        if problem:
            log.warning("pod sandbox %s: the rootfs is not idmapped, so the image's files are nobody's inside: %s",
                        sandbox.id, problem)
            return None
        opts = sandbox.namespace_options
        uids, gids = opts.uid_mappings[0], opts.gid_mappings[0]
        return IdMap(uid=uids.host_id, gid=gids.host_id, length=min(uids.length, gids.length))

    async def _spawn(self, record: ContainerRecord, runtime: OCIRuntime, request: ContainerRequest) -> None:
        """Start conmon, which runs `runtime create`; on failure the container ends as exited (StartError).
        Two phases: conmon started and placed in its cgroup, then `runtime create` until the pid is known."""
        began, parent = time.time(), trace.current_context()  # the CreateContainer call's span, if tracing
        try:
            created = await self._t.conmon.create_container(
                runtime, record.id, Path(record.bundle), record.log_path, request.name,
                stdin=request.stdin, stdin_once=request.stdin_once, tty=request.tty,
                log_size_max=self._t.config.runtime.log_size_max, cgroup=record.conmon_cgroup)
        except Exception as e:
            trace.record("runtime_create", began, time.time(), record.sandbox_id, record.name, parent, failed=True)
            if record.state == ContainerState.CREATED:
                record.move(ContainerState.EXITED)
                record.exit_code, record.reason = 128, "StartError"
                record.message = str(e)
                record.finished_at = time.time_ns()
                self._t.save(record)
                self._t.publish(record, ev.STOPPED)
            raise
        crash_point("container.create.after_runtime")
        ready, done = created.monitor_ready or began, time.time()
        trace.record("conmon", began, ready, record.sandbox_id, record.name, parent)
        trace.record("runtime_create", ready, done, record.sandbox_id, record.name, parent)
        record.pid, record.conmon_pid = created.pid, created.conmon_pid
        self._t.save(record)
        self._exits.watch_monitor(record)

    def mark_abandoned(self, request: ContainerRequest) -> None:
        """The caller gave up before CreateContainer returned: its retry gets that container, not 'name is
        reserved'."""
        sandbox = self._sandboxes.find(request.sandbox_id)
        if sandbox is not None:
            self._t.claims.abandon(specgen.reserved_name(request, sandbox))

    async def spawned(self, record: ContainerRecord) -> None:
        """Wait for the runtime create started by CreateContainer; raise its error, once, if it failed."""
        pending = self._spawning.pop(record.id, None)
        if pending is None:
            return
        try:
            await pending
        except Exception as e:
            raise FailedPrecondition(f"container {record.id} could not be created: {e}") from e


def _image_ref(image: ImageRecord | None) -> str:
    """What kubelet shows as an image's imageID: its repo digest, else its id ("" for an image not there, which
    the rootfs step then reports as not found)."""
    if image is None:
        return ""
    return image.repo_digests[0] if image.repo_digests else image.id
