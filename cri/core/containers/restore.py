"""Restore of a checkpoint archive as a new container, as CRI-O does it (server/container_restore.go and conmon's
--restore): CreateContainer whose image is the path of an archive written by CheckpointContainer makes a container
of the checkpointed one's image, process and annotations, in the new request's sandbox, with the new request's
name, labels, resources, security context and mounts (every bind mount the checkpoint had must be in it again);
its root filesystem gets the archive's changes. StartContainer then has conmon run `runtime restore` from the
CRIU images instead of `runtime create` + `start`: the process continues where it was checkpointed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cri.core.images import ImageService
from cri.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from cri.oci import restore as archive
from cri.oci.checkpoint import CHECKPOINT_DIR
from cri.oci.restore import ArchiveError, Checkpoint
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_record import ContainerRecord, ContainerRequest
from cri.state.sandbox_record import SandboxRecord
from storage.image_records import ImageRecord

from . import checkpoint as checkpoints
from .exits import Exits
from .table import Table

log = logging.getLogger(__name__)

RESTORE_UNPACK_PREFIX = ".restore-"  # an archive being unpacked, in the containers' state directory
RESTORE_DIR = "restore"        # the unpacked archive, in the container's bundle until its process is restored
RESTORE_TIMEOUT = 300.0
RESTORE_OPTIONS = ("--file-locks",)  # as CheckpointContainer dumped it
# Mounts the runtime makes for every container (and CRI-O's own): they follow the new pod, not the archive.
OWN_MOUNTS = frozenset({"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
                        "/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/etc/passwd", "/etc/group",
                        "/run/secrets", "/run/.containerenv"})
CRIO_ANNOTATIONS = "io.kubernetes.cri-o.Annotations"
CONTAINER_HASH = "io.kubernetes.container.hash"
POD_UID = "io.kubernetes.pod.uid"
CHECKPOINT_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"


def is_checkpoint_image(image: ImageRecord) -> bool:
    """An OCI image made of a checkpoint archive, as CRI-O marks them (buildah config --annotation ...)."""
    return CHECKPOINT_ANNOTATION in image.annotations


async def unpack(table: Table, path: str, handler: str) -> Checkpoint:
    """The archive unpacked into a new directory under the containers' state (the caller moves or deletes it);
    FAILED_PRECONDITION where CRIU or the runtime cannot restore, INVALID_ARGUMENT for a bad archive."""
    return await _into_new_dir(table, f"checkpoint archive {path}", handler,
                               lambda dest: asyncio.to_thread(archive.unpack, Path(path), dest))


async def unpack_image(table: Table, images: ImageService, ref: str, image_id: str, handler: str) -> Checkpoint:
    """The same, from a checkpoint OCI image's layer."""
    return await _into_new_dir(table, f"checkpoint image {ref}", handler, lambda dest: images.read_layers(
        image_id, lambda layers: archive.copy_from_image(layers, dest)))


async def _into_new_dir(table: Table, what: str, handler: str,
                        fill: Callable[[Path], Awaitable[Checkpoint]]) -> Checkpoint:
    why = await checkpoints.problem(table, handler)
    if why:
        raise FailedPrecondition(f"cannot restore a container from the {what}: {why}")
    dest = Path(tempfile.mkdtemp(prefix=RESTORE_UNPACK_PREFIX, dir=table.dir))
    try:
        return await fill(dest)
    except ArchiveError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise InvalidArgument(f"{what}: {e}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def restore_request(request: ContainerRequest, sandbox: SandboxRecord, path: str, ckpt: Checkpoint,
                    image_known: bool) -> ContainerRequest:
    """The request the restored container is made from: CRI-O's rules (see the module docstring)."""
    if not image_known:
        raise NotFound(f"image {ckpt.image_name!r} of the checkpoint archive {path} is not in the store: pull it "
                       f"first")
    process: dict[str, Any] = ckpt.spec["process"]
    if process.get("terminal"):
        raise FailedPrecondition(f"the container checkpointed in {path} has a terminal (tty): only containers "
                                 f"without one can be restored")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument(f"checkpoint archive {path}: spec.dump has no process args")
    env = [tuple(e.split("=", 1)) for e in process.get("env") or [] if isinstance(e, str) and "=" in e]
    linux = _object(ckpt.spec.get("linux"))
    security = request.security.model_copy(update={
        key: [p for p in linux[field] if isinstance(p, str)]
        for key, field in (("masked_paths", "maskedPaths"), ("readonly_paths", "readonlyPaths"))
        if isinstance(linux.get(field), list)})
    return request.model_copy(update={
        "image": ckpt.image_name, "command": list(args), "args": [], "working_dir": str(process.get("cwd") or ""),
        "envs": env, "mounts": _mounts(request, path, ckpt), "annotations": _annotations(request, sandbox, ckpt),
        "tty": False, "stdin": False, "stdin_once": False, "security": security})


def _mounts(request: ContainerRequest, path: str, ckpt: Checkpoint) -> list[Any]:
    """The request's mounts at the checkpoint's destinations; each bind mount the checkpoint had (not one of the
    runtime's own) must be in the request, or the archive could mount host paths the caller never named."""
    asked = {m.container_path.rstrip("/") or "/": m for m in request.mounts}
    mounts, missing = [], []
    for m in ckpt.spec.get("mounts") or []:
        destination = m.get("destination") if isinstance(m, dict) else None
        if not isinstance(destination, str):
            continue
        key = destination.rstrip("/") or "/"
        if key in asked:
            mounts.append(asked.pop(key))
        elif key not in OWN_MOUNTS:
            missing.append(destination)
    if missing:
        raise InvalidArgument(f"restoring {path} expects these mounts in the container config, as the "
                              f"checkpointed container had them: {', '.join(missing)}")
    return mounts


def _annotations(request: ContainerRequest, sandbox: SandboxRecord, ckpt: Checkpoint) -> dict[str, str]:
    """The checkpointed container's annotations, with the new pod's uid and the new request's container hash (or
    kubelet would restart it)."""
    spec_annotations = _object(ckpt.spec.get("annotations"))
    if CRIO_ANNOTATIONS in spec_annotations:  # CRI-O keeps the request's annotations as one JSON value
        try:
            original = json.loads(spec_annotations[CRIO_ANNOTATIONS])
        except (TypeError, ValueError):
            original = {}
    else:
        original = {k: v for k, v in spec_annotations.items()
                    if not k.startswith(("io.kubernetes.cri.", "io.kubernetes.cri-o."))}
    annotations = {str(k): str(v) for k, v in (original if isinstance(original, dict) else {}).items()}
    if POD_UID in annotations:
        annotations[POD_UID] = sandbox.uid
    if CONTAINER_HASH in annotations and CONTAINER_HASH in request.annotations:
        annotations[CONTAINER_HASH] = request.annotations[CONTAINER_HASH]
    return annotations


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


async def restore_process(table: Table, exits: Exits, record: ContainerRecord) -> None:
    """StartContainer of a restored container: conmon runs `runtime restore` from the CRIU images; the process
    runs when it returns. A failure ends the container as exited (StartError) with CRIU's reason."""
    bundle = Path(record.bundle)
    runtime = table.runtime(record.runtime_handler)
    exits.starting.add(record.id)
    try:
        created = await table.conmon.create_container(
            runtime, record.id, bundle, record.log_path, record.name,
            log_size_max=table.config.runtime.log_size_max, cgroup=record.conmon_cgroup,
            restore=bundle / RESTORE_DIR / CHECKPOINT_DIR, runtime_options=RESTORE_OPTIONS,
            timeout=RESTORE_TIMEOUT)
    except (OCIRuntimeError, OSError) as e:
        exits.starting.discard(record.id)
        reason = f"{e}{_criu_log(bundle)}"
        exits.record_exit(record, 128, "StartError", time.time_ns(), f"restoring the checkpoint: {reason}")
        raise Internal(f"restoring container {record.id} from {record.restore_from}: {reason}") from e
    try:
        record.pid, record.conmon_pid = created.pid, created.conmon_pid
        table.save(record)
        exits.watch_monitor(record)
        await asyncio.to_thread(shutil.rmtree, bundle / RESTORE_DIR, True)  # the images served their purpose
    finally:
        exits.starting.discard(record.id)  # an exit applied meanwhile counts as started first


def _criu_log(bundle: Path, lines: int = 5) -> str:
    """The last error lines of CRIU's restore.log (runc has CRIU write it in the work path, the bundle)."""
    try:
        text = (bundle / "restore.log").read_text(errors="replace")
    except OSError:
        return ""
    errors = [line.strip() for line in text.splitlines() if "Error" in line or "error" in line][-lines:]
    return f"; CRIU: {' | '.join(errors)}" if errors else ""
