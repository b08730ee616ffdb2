"""Tracing end to end: a daemon with [tracing] enabled sends its spans over OTLP/gRPC to a collector (here
one served by the test); a CRI call carrying kubelet's traceparent continues that trace, and the phases of a
pod's start are children of the call's span."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from cri.api.v1 import api_pb2
from tests.integration.helpers_containers import pod_config

pytestmark = pytest.mark.integration
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, name: str, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(s.name == name for s in self.spans):
                    return list(self.spans)
            time.sleep(0.1)
        raise AssertionError(f"no span {name!r} reached the collector: {[s.name for s in self.spans]}")


@pytest.fixture
def collector():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")  # the kernel's pick: a port chosen first may be taken by then
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_a_pod_start_is_one_trace_under_the_callers_span(daemon_factory, collector, tmp_path):
    servicer, port = collector
    d = daemon_factory({"tracing": {"enable": True, "endpoint": f"127.0.0.1:{port}"}})
    logs = tmp_path / "logs"
    logs.mkdir()
    pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config(logs, name="traced")), timeout=60,
                                  metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]).pod_sandbox_id
    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.stop()  # the batch goes out at shutdown at the latest
    spans = servicer.wait_for("RunPodSandbox")
    run = next(s for s in spans if s.name == "RunPodSandbox")
    assert run.trace_id.hex() == TRACE_ID
    assert run.parent_span_id.hex() == PARENT_ID
    children = {s.name: s for s in spans if s.parent_span_id == run.span_id}
    assert {"namespaces", "sandbox_files"} <= set(children), sorted(children)
    for child in children.values():
        assert child.trace_id == run.trace_id
        assert run.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= run.end_time_unix_nano
    attributes = {a.key: a.value.string_value for a in children["namespaces"].attributes}
    assert attributes["pycri.pod_sandbox_id"] == pod
    stop = next(s for s in spans if s.name == "StopPodSandbox")
    assert stop.trace_id != run.trace_id
    assert stop.parent_span_id == b""
