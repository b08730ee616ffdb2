"""CheckpointContainer: CRIU images of a running container and its rootfs changes, in CRI-O's archive layout
(cri/oci/checkpoint.py), where kubelet asked; the container keeps running. Where CRIU or the handler's runtime
cannot checkpoint on this host, FAILED_PRECONDITION names what is missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from cri.errors import FailedPrecondition, Internal, InvalidArgument
from cri.oci import checkpoint as archive, criu
from cri.oci.conmon import BundlePaths
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_state import ContainerState

from .table import Table

DEFAULT_TIMEOUT = 300.0


async def problem(table: Table, handler: str) -> str | None:
    """Why containers of this handler cannot be checkpointed (or restored) here, or None."""
    runtime = table.runtime(handler)
    return await criu.criu_problem() or await criu.runtime_problem(handler, runtime.path)


async def checkpoint(table: Table, ref: str, location: str, timeout: float) -> None:
    record = table.get(ref)
    if not location.startswith("/"):
        raise InvalidArgument(f"checkpoint location {location!r} must be an absolute path of the archive to write")
    if record.state != ContainerState.RUNNING:
        raise FailedPrecondition(f"container {record.id} is not running (state {record.state}): only a running "
                                 f"container can be checkpointed")
    why = await problem(table, record.runtime_handler)
    if why:
        raise FailedPrecondition(f"cannot checkpoint container {record.id}: {why}")
    runtime = table.runtime(record.runtime_handler)
    work = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=record.bundle))
    try:
        await runtime.checkpoint(record.id, work / archive.CHECKPOINT_DIR, work, timeout or DEFAULT_TIMEOUT)
        spec = json.loads(BundlePaths(Path(record.bundle)).config.read_text())
        config = archive.config_dump(record.id, record.name, record.image, record.image_id, record.runtime_handler,
                                     record.created_at)
        await asyncio.to_thread(archive.write_archive, Path(location), work, config=config, spec=spec,
                                upper=Path(record.rootfs).parent / "upper")
    except OCIRuntimeError as e:
        raise Internal(f"checkpoint of container {record.id}: {e}") from e
    except OSError as e:
        raise Internal(f"writing the checkpoint archive {location}: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
