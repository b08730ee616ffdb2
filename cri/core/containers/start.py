"""StartContainer: wait for the background `runtime create`, then `runtime start` (or, for a container made from a
checkpoint archive, conmon's `runtime restore`: see restore.py).

A container may exit before `runtime start` returns; the exit is then applied as a start followed by an exit
(see Exits.record_exit), so the start is not marked a second time.
"""

from __future__ import annotations

from cri.errors import FailedPrecondition, Internal
from cri.faults import crash_point
from cri.observe import trace
from cri.oci.runtime import OCIRuntimeError
from cri.state.container_state import STARTABLE, ContainerState

from .create import Creator
from .exits import Exits
from .restore import restore_process
from .table import Table


async def start_container(table: Table, creator: Creator, exits: Exits, ref: str) -> None:
    record = table.get(ref)
    async with table.lock(record.id):
        await creator.spawned(record)
        if record.state not in STARTABLE:
            raise FailedPrecondition(f"container {record.id} is {record.state}, only a created one can start")
        if record.restore_from:
            with trace.phase("start", pod=record.sandbox_id, subject=record.name):
                await restore_process(table, exits, record)
        else:
            exits.starting.add(record.id)
            try:
                with trace.phase("start", pod=record.sandbox_id, subject=record.name):
                    await table.runtime(record.runtime_handler).start(record.id)
            except OCIRuntimeError as e:
                raise Internal(f"starting container {record.id}: {e}") from e
            finally:
                exits.starting.discard(record.id)
        crash_point("container.start.after_runtime")
        if record.state == ContainerState.CREATED:  # else an immediate exit was applied, and marked the start first
            exits.mark_running(record)
