"""cri/server/calls.py: Stream* calls are counted and timed in the metrics like unary ones, with their status."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from cri.errors import NotFound
from cri.server.calls import wrap


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self, calls=None):
        self.aborted = None
        self.calls = calls
        self.recorded_at_abort = None

    async def abort(self, code, message):
        # As grpc.aio's context does: the status is on its way to the caller before abort raises.
        self.aborted = (code, message)
        if self.calls is not None:
            self.recorded_at_abort = list(self.calls)
        raise _Aborted(message)


def _runtime():
    calls = []
    metrics = SimpleNamespace(rpc=lambda name: lambda code, seconds: calls.append((name, code, seconds >= 0)))
    return SimpleNamespace(metrics=metrics), calls


async def _two(rt, request, context):
    yield 1
    yield 2


async def _fails_after_one(rt, request, context):
    yield 1
    raise NotFound("pod sandbox x not found")


async def _collect(call, context):
    return [item async for item in call(None, context)]


def test_a_stream_that_ends_is_recorded_ok():
    rt, calls = _runtime()
    assert asyncio.run(_collect(wrap("StreamContainers", _two, rt), _Context())) == [1, 2]
    assert calls == [("StreamContainers", "OK", True)]


def test_a_stream_that_fails_is_recorded_with_its_code_and_aborted():
    rt, calls = _runtime()
    context = _Context(calls)
    with pytest.raises(_Aborted):
        asyncio.run(_collect(wrap("StreamPodSandboxes", _fails_after_one, rt), context))
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "pod sandbox x not found")
    assert context.recorded_at_abort == [("StreamPodSandboxes", "NOT_FOUND", True)]
    assert calls == [("StreamPodSandboxes", "NOT_FOUND", True)]


@pytest.mark.parametrize("name", ["ContainerStatus", "RemoveContainer"])  # a read, and a call run to its end
def test_a_failed_call_is_in_the_metrics_before_its_status_reaches_the_caller(name):
    """A caller that reads the metrics as soon as it has its error must find the error counted there."""
    rt, calls = _runtime()
    context = _Context(calls)
    context.cancelled = lambda: False
    context.time_remaining = lambda: None
    context.invocation_metadata = lambda: ()

    async def missing(rt, request, context):
        raise NotFound("container f not found")

    with pytest.raises(_Aborted):
        asyncio.run(wrap(name, missing, rt)(None, context))
    assert context.recorded_at_abort == [(name, "NOT_FOUND", True)]
    assert calls == [(name, "NOT_FOUND", True)]


def test_a_stream_the_caller_leaves_is_recorded_cancelled():
    rt, calls = _runtime()

    async def leave_after_one():
        stream = wrap("StreamImages", _two, rt)(None, _Context())
        assert await stream.__anext__() == 1
        await stream.aclose()

    asyncio.run(leave_after_one())
    assert calls == [("StreamImages", "CANCELLED", True)]


def test_a_unary_call_the_caller_leaves_is_recorded_cancelled():
    rt, calls = _runtime()

    async def slow(rt, request, context):
        await asyncio.sleep(3600)

    async def leave():
        task = asyncio.ensure_future(wrap("ListContainers", slow, rt)(None, _Context()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    assert calls == [("ListContainers", "CANCELLED", True)]


def test_an_rpc_without_a_handler_answers_unimplemented_naming_itself():
    from cri.server.calls import unimplemented

    context = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(unimplemented("SomeNewCall")(object(), context))
    assert context.aborted[0] == grpc.StatusCode.UNIMPLEMENTED
    assert "SomeNewCall" in context.aborted[1]
