"""The undo stack and step naming of multi-step operations."""

import asyncio

from cri.core.undo import UndoStack, named_error
from cri.errors import InvalidArgument, Internal
from netplugins.errors import CNIError


def test_undo_runs_in_reverse_and_survives_a_failing_step():
    done = []

    async def async_undo():
        done.append("async")

    def failing():
        raise RuntimeError("cannot undo")

    stack = UndoStack()
    stack.push("first", lambda: done.append("first"))
    stack.push("second", async_undo)
    stack.push("broken", failing)
    stack.push("last", lambda: done.append("last"))
    asyncio.run(stack.unwind())
    assert done == ["last", "async", "first"]
    asyncio.run(stack.unwind())  # each undo runs once
    assert done == ["last", "async", "first"]


def test_named_errors_keep_their_kind_and_name_the_step():
    err = named_error("creating the pod cgroup", InvalidArgument("bad path"))
    assert isinstance(err, InvalidArgument) and str(err) == "creating the pod cgroup: bad path"
    cni = named_error("CNI ADD", CNIError("bridge", "ADD", 7, "boom"))
    assert isinstance(cni, CNIError)
    assert str(cni).startswith("CNI ADD: CNI plugin bridge ADD failed (code 7)")
    other = named_error("mounting shm", OSError(28, "No space left on device"))
    assert isinstance(other, Internal)
    assert "mounting shm" in str(other)
    assert "No space" in str(other)
