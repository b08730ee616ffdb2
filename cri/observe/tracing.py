"""OpenTelemetry tracing, imported only when `[tracing] enable`: one span per CRI call, continuing the
W3C trace context kubelet sends in the gRPC metadata (`traceparent`), with the phases of `trace.phase`
as its children. Spans leave through a batching OTLP/gRPC exporter to `[tracing] endpoint`."""

from __future__ import annotations

from typing import Any, Iterable

from opentelemetry import context as otel_context, trace as otel_trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from cri.server.runtime_version import PYCRI_VERSION


class Span:
    """An open span made current until `close`."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any, token: Any) -> None:
        self._span, self._token = span, token

    def close(self, error: BaseException | None = None, code: str = "") -> None:
        if code:
            self._span.set_attribute("rpc.grpc.status_code", code)
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        elif code and code != "OK":
            self._span.set_status(Status(StatusCode.ERROR, code))
        otel_context.detach(self._token)
        self._span.end()


class Tracer:
    def __init__(self, exporter: SpanExporter, sampling_per_million: int = 1_000_000,
                 processor: Any = None) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "pycri",
                                                                 "service.version": PYCRI_VERSION}),
                                       sampler=ParentBased(TraceIdRatioBased(sampling_per_million / 1e6)))
        self.provider.add_span_processor(processor or BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("pycri")

    def open(self, name: str, attributes: dict, parent: Any = None, kind: SpanKind = SpanKind.INTERNAL) -> Span:
        span = self._tracer.start_span(name, context=parent, kind=kind,
                                       attributes={k: str(v) for k, v in attributes.items()})
        return Span(span, otel_context.attach(otel_trace.set_span_in_context(span, parent)))

    def rpc(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Span:
        """The server span of one CRI call, under the caller's span when its metadata carries one."""
        carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
        parent = extract(carrier) if "traceparent" in carrier else None
        return self.open(method, {"rpc.system": "grpc", "rpc.method": method}, parent,
                         SpanKind.SERVER)

    def closed(self, name: str, attributes: dict, start: float, end: float, parent: Any, failed: bool) -> None:
        span = self._tracer.start_span(name, context=parent, start_time=int(start * 1e9),
                                       attributes={k: str(v) for k, v in attributes.items()})
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=int(end * 1e9))

    def current(self) -> Any:
        return otel_context.get_current()

    def shutdown(self) -> None:
        self.provider.shutdown()


def otlp_tracer(endpoint: str, sampling_per_million: int) -> Tracer:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return Tracer(OTLPSpanExporter(endpoint=endpoint, insecure=True), sampling_per_million)
