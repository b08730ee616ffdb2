"""The container state machine: the moves the table allows, and a record refusing any other."""

import pytest

from cri.errors import Internal
from cri.state.container_record import ContainerRecord
from cri.state.container_state import MOVES, ContainerState

S = ContainerState


def record(state: ContainerState) -> ContainerRecord:
    return ContainerRecord(id="a" * 64, sandbox_id="b" * 64, name="c", reserved_name="c_p_ns_uid_0", state=state)


@pytest.mark.parametrize("current,new", [(S.CREATING, S.CREATED), (S.CREATED, S.RUNNING), (S.CREATED, S.EXITED),
                                         (S.RUNNING, S.EXITED)])
def test_allowed_moves_change_the_state(current, new):
    r = record(current)
    r.move(new)
    assert r.state is new


@pytest.mark.parametrize("current,new", [(S.EXITED, S.RUNNING), (S.RUNNING, S.CREATED), (S.CREATING, S.RUNNING),
                                         (S.EXITED, S.EXITED), (S.RUNNING, S.RUNNING)])
def test_other_moves_are_refused_and_leave_the_state(current, new):
    r = record(current)
    with pytest.raises(Internal, match=f"no move from state {current} to {new}"):
        r.move(new)
    assert r.state is current


def test_every_state_has_a_row_and_exited_is_final():
    assert set(MOVES) == set(S)
    assert MOVES[S.EXITED] == frozenset()


def test_cri_values_and_liveness():
    assert [s.cri for s in (S.CREATED, S.RUNNING, S.EXITED)] == [0, 1, 2]
    assert {s for s in S if s.live} == {S.CREATED, S.RUNNING}


def test_a_persisted_record_reads_back_with_the_enum():
    r = record(S.RUNNING)
    again = ContainerRecord.model_validate_json(r.model_dump_json())
    assert again.state is S.RUNNING
    assert '"state":"running"' in r.model_dump_json()
