"""Phases of the runtime's work: each is kept for `pycri timeline` (a bounded ring per pod), reported to
the observers the metrics register (CNI latency), and, when `[tracing] enable`, sent as an OpenTelemetry
span, a child of the CRI call's span.

Core code says `with trace.phase("cni_add", pod=record.id):`. With tracing off a phase costs two clock
reads and a list append, and opentelemetry is never imported.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from cri.observe.timeline import Timeline

timeline = Timeline()
# phase name -> fn(seconds, failed); the metrics register theirs at start.
observers: dict[str, Callable[[float, bool], None]] = {}
_tracer: Any = None  # a tracing.Tracer while tracing is enabled


def set_tracer(tracer: Any) -> None:
    global _tracer
    _tracer = tracer


def tracer() -> Any:
    return _tracer


@contextmanager
def phase(name: str, pod: str = "", subject: str = "sandbox", **attributes: Any) -> Iterator[None]:
    """Time the block as phase `name` of pod `pod` (its sandbox, or the container or image named `subject`)."""
    span = None
    if _tracer is not None:
        span = _tracer.open(name, {**attributes, "pycri.pod_sandbox_id": pod, "pycri.subject": subject})
    start = time.time()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        end = time.time()
        if pod:
            timeline.add(pod, subject, name, start, end, error is not None)
        observer = observers.get(name)
        if observer is not None:
            observer(end - start, error is not None)
        if span is not None:
            span.close(error)


def record(name: str, start: float, end: float, pod: str = "", subject: str = "sandbox", parent: Any = None,
           failed: bool = False) -> None:
    """A phase timed elsewhere (in a storage worker thread): kept like `phase`, and sent as a span with the
    given times under `parent` (an opentelemetry Context captured where the work began)."""
    if pod:
        timeline.add(pod, subject, name, start, end, failed)
    if _tracer is not None:
        _tracer.closed(name, {"pycri.pod_sandbox_id": pod, "pycri.subject": subject}, start, end, parent, failed)


def current_context() -> Any:
    """The opentelemetry Context to hand to `record` from another thread, or None with tracing off."""
    return None if _tracer is None else _tracer.current()
