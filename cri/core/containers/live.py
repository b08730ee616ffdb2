"""What a live container allows besides start and stop: ExecSync, UpdateContainerResources and ReopenContainerLog."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from cri.core.streams.process import container_process, exec_process
from cri.errors import FailedPrecondition, Internal, InvalidArgument
from cri.oci import spec_inputs, spec_resources
from cri.oci.conmon import Conmon
from cri.oci.runtime import ExecResult, OCIRuntimeError
from cri.state.container_record import ResourcesSpec
from cri.state.container_state import EXECUTABLE, ContainerState
from hostos import cgroups
from hostos.cgroups import limits

from . import specgen
from .create import Creator
from .table import Table

LOG_REOPEN_WAIT = 5.0


async def exec_sync(table: Table, ref: str, argv: list[str], timeout: float) -> ExecResult:
    record = table.get(ref)
    if record.state not in EXECUTABLE:
        raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
    if not argv:
        raise InvalidArgument("exec command must not be empty")
    pid_file = Path(record.bundle) / f"exec-{os.urandom(6).hex()}.pid"
    try:
        process = exec_process(container_process(Path(record.bundle)), argv, tty=False)
        return await table.runtime(record.runtime_handler).exec_sync(record.id, process, timeout, pid_file)
    except OCIRuntimeError as e:
        raise Internal(f"exec in container {record.id}: {e}") from e


async def update_resources(table: Table, creator: Creator, ref: str, resources: ResourcesSpec) -> None:
    record = table.get(ref)
    async with table.lock(record.id):
        await creator.spawned(record)
        if not record.state.live:
            raise FailedPrecondition(f"container {record.id} is {record.state}; only a live one can be updated")
        try:
            body = spec_resources.resources_object(specgen.resources(table.config, resources),
                                             swap_accounting=cgroups.swap_accounting())
        except spec_inputs.SpecError as e:
            raise InvalidArgument(str(e)) from e
        try:  # cgroup v2 takes any memory.max and OOM-kills to fit: refuse that, as a pod resize does
            await asyncio.to_thread(limits.refuse_memory_shrink_below_use, record.cgroups_path,
                                    resources.memory_limit_in_bytes)
        except OSError as e:
            raise FailedPrecondition(f"container {record.id}: {e.strerror or e}") from None
        try:
            await table.runtime(record.runtime_handler).update(record.id, body)
        except OCIRuntimeError as e:
            raise Internal(f"updating resources of {record.id}: {e}") from e
        record.resources = resources
        table.save(record)


async def reopen_log(table: Table, ref: str) -> None:
    record = table.get(ref)
    if record.state != ContainerState.RUNNING:
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
