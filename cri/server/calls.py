"""The call wrapper that every RPC goes through: request id, one log line, error mapping.

It plays the role of a server interceptor, but wraps the handler directly: grpc.aio interceptors
add a layer of indirection per call, and this is the hot path of every CRI request.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from typing import Callable, TYPE_CHECKING

import grpc

from cri.observe import trace
from cri.server.errors import is_expected, status_for

if TYPE_CHECKING:  # (the handler context imports the managers)
    from cri.context import Runtime

log = logging.getLogger("pycri.rpc")
_ids = itertools.count(1)

# Calls kubelet makes every second or so: logged at debug so they do not drown the log.
_QUIET_PREFIXES = ("List", "Stream", "Version", "Status", "ImageStatus", "PodSandboxStatus", "ContainerStatus",
                   "ImageFsInfo", "ContainerStats", "PodSandboxStats", "RuntimeConfig")


def _level(name: str) -> int:
    return logging.DEBUG if name.startswith(_QUIET_PREFIXES) else logging.INFO


def _failure(name: str, rid: int, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status a failed call leaves with; an unexpected failure is logged with its traceback (call it while
    handling `exc`)."""
    code, message = status_for(exc)
    if not is_expected(exc):
        log.exception("rpc=%s id=%d failed unexpectedly", name, rid)
    return code, message


def _done(name: str, rid: int, code: grpc.StatusCode, start: float, record: Callable[[str, float], None] | None,
          level: int) -> None:
    """A call's end: its duration in the metrics, and its log line (failures at least at info)."""
    duration = time.perf_counter() - start
    if record is not None:
        record(code.name, duration)
    lvl = level if code is grpc.StatusCode.OK else logging.INFO
    if log.isEnabledFor(lvl):
        log.log(lvl, "rpc=%s id=%d code=%s duration_ms=%.2f", name, rid, code.name, duration * 1000)


def wrap_unary(name: str, handler: Callable, rt: Runtime, on_abandoned: Callable | None = None) -> Callable:
    """Calls that change the host run to their end even when the caller gives up (a deadline, a
    dropped connection): stopping half-way would leave work for reconciliation to undo. An
    abandoned call is reported to `on_abandoned(rt, request)` at once, so that the caller's retry,
    which may arrive while the work still runs, can wait for it and claim its result. So is a call that
    ends after its deadline before grpc cancelled it: its reply is lost just the same."""
    level = _level(name)
    mutating = level == logging.INFO
    metrics = getattr(rt, "metrics", None)
    record = metrics.rpc(name) if metrics is not None else None
    tracer = trace.tracer()

    async def run_to_end(request, context):
        task = asyncio.ensure_future(handler(rt, request, context))
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("rpc=%s: the caller went away; finishing the operation anyway", name)
            if on_abandoned is not None:
                on_abandoned(rt, request)
            raise
        remaining = context.time_remaining()
        if on_abandoned is not None and (context.cancelled() or (remaining is not None and remaining <= 0)):
            log.warning("rpc=%s: done after the caller's deadline; its retry gets the result", name)
            on_abandoned(rt, request)
        return result

    async def call(request, context: grpc.aio.ServicerContext):
        rid = next(_ids)
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        span = tracer.rpc(name, context.invocation_metadata()) if tracer is not None else None
        done = False
        try:
            if mutating:
                return await run_to_end(request, context)
            return await handler(rt, request, context)
        except asyncio.CancelledError:  # the caller went away (a deadline, a dropped connection)
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # every failure leaves as a status, never as a crash
            code, message = _failure(name, rid, exc)
            # grpc.aio's abort sends the status before it raises: the caller may read the metrics or the
            # trace the moment it has its error, so both are recorded first.
            done = True
            _done(name, rid, code, start, record, level)
            if span is not None:
                span.close(code=code.name)
            await context.abort(code, message)
        finally:
            if not done:
                _done(name, rid, code, start, record, level)
                if span is not None:
                    span.close(code=code.name)

    return call


def wrap_stream(name: str, handler: Callable, rt: Runtime) -> Callable:
    """Stream* calls: counted and timed in the metrics like the others (open to close), and logged when done."""
    level = _level(name)
    metrics = getattr(rt, "metrics", None)
    record = metrics.rpc(name) if metrics is not None else None

    async def call(request, context: grpc.aio.ServicerContext):
        rid = next(_ids)
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        done = False
        try:
            async for item in handler(rt, request, context):
                yield item
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away mid-stream
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = _failure(name, rid, exc)
            done = True  # recorded before abort sends the status, as for unary calls
            _done(name, rid, code, start, record, level)
            await context.abort(code, message)
        finally:
            if not done:
                _done(name, rid, code, start, record, level)

    return call


def wrap(name: str, handler: Callable, rt: Runtime, on_abandoned: Callable | None = None) -> Callable:
    if inspect.isasyncgenfunction(handler):
        return wrap_stream(name, handler, rt)
    return wrap_unary(name, handler, rt, on_abandoned)


def unimplemented(name: str) -> Callable:
    async def call(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by pycri")

    return call
