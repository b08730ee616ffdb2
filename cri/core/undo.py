"""Undo stacks for multi-step operations, errors that name the step that failed, and the undo at start of what a
crash left half-created.

A multi-step operation pushes the undo of each step that changed the host; when a later step fails, the
undos run in reverse and the caller's error says which step failed, keeping its kind (so its gRPC code).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable

from cri.errors import CRIError, Internal
from cri.state.index import Index, NameRegistry
from netplugins import NetPluginError

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """Internal marker: wraps the failure of one named step until the undo stack has run."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause


def named_error(step: str, error: BaseException) -> BaseException:
    """The same kind of error (so the gRPC code stays right) with a message naming the failed step."""
    if isinstance(error, (CRIError, NetPluginError)) and len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{step}: {error.args[0]}",)
        return error
    return Internal(f"{step}: {error}")


async def run_step(name: str, work: Awaitable[Any]) -> Any:
    """Await `work`; a failure comes out as StepFailed carrying `name`."""
    try:
        return await work
    except Exception as e:
        raise StepFailed(name, e) from e


class UndoStack:
    """Undo actions of the steps done so far, run in reverse on failure; an undo failure is logged, not raised."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self._steps.append((what, action))

    async def unwind(self) -> None:
        while self._steps:
            what, action = self._steps.pop()
            try:
                result = action()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("undo of %r failed", what)


async def restore_or_undo(record: Any, kind: str, names: NameRegistry, index: Index[Any],
                          destroy: Callable[[Any], Awaitable[None]]) -> bool:
    """At start, for a container or sandbox record: one a crash left "creating" is undone (False); any other is
    taken back (True), its name reserved again (a clash is logged: it stays listed so it can be removed)."""
    if record.state == "creating":
        log.warning("%s %s was being created when the daemon stopped; undoing it", kind, record.id)
        try:
            await destroy(record)
        except Exception:
            log.exception("cleaning up half-created %s %s failed", kind, record.id)
        return False
    try:
        names.reserve(record.reserved_name, record.id)
    except CRIError as e:
        log.error("%s %s: %s; it stays listed so it can be removed", kind, record.id, e)
    index.add(record.id, record)
    return True
