"""A container's states and the moves between them, written down as data (as containerd's
store/container/status.go draws its state machine), so every check asks the table instead of repeating tuples.

    creating --> created --> running --> exited
                    \\___________________/^

"creating": the record exists but the host work may be half done (a crash leaves it for reconciliation to
undo; a failed create deletes the record instead of moving it). "created": conmon and `runtime create` ran or
run in the background. An exit can come before `runtime start` returns: it is applied as a start then an exit.
"""

from __future__ import annotations

from enum import StrEnum

from cri.errors import Internal


class ContainerState(StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"

    @property
    def live(self) -> bool:
        """A process exists or may still come (created, running): it can be stopped, updated, and exit."""
        return self in LIVE

    @property
    def cri(self) -> int:
        """The CRI ContainerState value (CONTAINER_CREATED=0, RUNNING=1, EXITED=2)."""
        return CRI_STATE[self]


MOVES: dict[ContainerState, frozenset[ContainerState]] = {
    ContainerState.CREATING: frozenset({ContainerState.CREATED}),
    ContainerState.CREATED: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
    ContainerState.RUNNING: frozenset({ContainerState.EXITED}),
    ContainerState.EXITED: frozenset(),
}
LIVE = frozenset({ContainerState.CREATED, ContainerState.RUNNING})
STARTABLE = frozenset({ContainerState.CREATED})
EXECUTABLE = frozenset({ContainerState.RUNNING})
# A record still "creating" is not listed: CRI has no such state, and its CreateContainer has not returned.
LISTED = frozenset({ContainerState.CREATED, ContainerState.RUNNING, ContainerState.EXITED})
CRI_STATE: dict[ContainerState, int] = {
    ContainerState.CREATING: 0, ContainerState.CREATED: 0, ContainerState.RUNNING: 1, ContainerState.EXITED: 2,
}


def check_move(current: ContainerState, new: ContainerState, container_id: str) -> None:
    """Internal when the table has no such move: a bug in the manager, never the caller's fault."""
    if new not in MOVES[current]:
        raise Internal(f"container {container_id}: no move from state {current} to {new}")
