"""Hostile requests against every RPC: the daemon never crashes, never writes outside its
directories, and answers each request with a deliberate status, never UNKNOWN or INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2, api_pb2_grpc
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.daemon import Daemon

pytestmark = pytest.mark.integration

ESCAPE_MARKER = Path("/tmp/pycri-fuzz-escaped")
# Strings built to break naive path joins, parsers and loggers.
HOSTILE_STRINGS = [
    "", "/", "..", "../..", "../" * 12 + "tmp/pycri-fuzz-escaped", "/tmp/pycri-fuzz-escaped",
    "a\x00b", "\x00", "x" * 70000, "name/with/slashes", "ünïcødé", "*", "%s%n", "a" * 64, "sha256:" + "0" * 64,
    "docker.io/library/../../etc:latest", "-rf", "--root=/", "\n", " ",
]
INT_EXTREMES = [0, -1, 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
# Pulls reach registries over the network; they are fuzzed with invalid references only (below).
# GetContainerEvents never ends by itself; the other server-streaming calls (Stream*) are read to their end.
SKIP = {"PullImage", "GetContainerEvents"}


def field_strategy(field, depth: int):
    if field.type == F.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            return st.dictionaries(st.sampled_from(HOSTILE_STRINGS[:12]) | st.text(max_size=20),
                                   st.sampled_from(HOSTILE_STRINGS[:12]) | st.text(max_size=20), max_size=3)
        inner = message_strategy(field.message_type, depth + 1)
    elif field.type == F.TYPE_STRING:
        inner = st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=40)
    elif field.type == F.TYPE_BYTES:
        inner = st.binary(max_size=64)
    elif field.type == F.TYPE_BOOL:
        inner = st.booleans()
    elif field.type == F.TYPE_ENUM:
        inner = st.sampled_from([v.number for v in field.enum_type.values])
    elif field.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
        inner = st.sampled_from([0, 1, 2**32 - 1])
    elif field.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        inner = st.sampled_from([0, 1, 2**64 - 1])
    elif field.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        inner = st.sampled_from([v for v in INT_EXTREMES if -(2**31) <= v < 2**31])
    elif field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        inner = st.floats(allow_nan=True, allow_infinity=True, width=32)
    else:
        inner = st.sampled_from(INT_EXTREMES)
    if field.is_repeated:
        return st.lists(inner, max_size=3)
    return inner


def message_strategy(descriptor, depth: int = 0):
    if depth > 3:
        return st.just({})
    fields = {f.name: field_strategy(f, depth) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields)


def build(message_class, values: dict):
    msg = message_class()
    _fill(msg, values)
    return msg


def _fill(msg, values: dict) -> None:
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            getattr(msg, name).update(value)
        elif field.type == F.TYPE_MESSAGE and field.is_repeated:
            for item in value:
                _fill(getattr(msg, name).add(), item)
        elif field.type == F.TYPE_MESSAGE:
            _fill(getattr(msg, name), value)
            if not value:
                getattr(msg, name).SetInParent()
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)


def rpcs():
    out = []
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            if method.name not in SKIP:
                out.append((service.name, method.name, method.input_type, method.server_streaming))
    return out


@pytest.fixture(scope="module")
def fuzz_daemon():
    ESCAPE_MARKER.unlink(missing_ok=True)
    d = Daemon().start()
    yield d
    leaks = d.cleanup()
    assert not leaks, leaks


ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.parametrize("service,method,input_type,streaming", rpcs(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_hostile_requests_get_deliberate_answers(fuzz_daemon, service, method, input_type, streaming):
    stub_class = api_pb2_grpc.RuntimeServiceStub if service == "RuntimeService" else api_pb2_grpc.ImageServiceStub
    stub = stub_class(fuzz_daemon.channel)
    call = getattr(stub, method)
    message_class = getattr(api_pb2, input_type.name)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(message_strategy(input_type))
    def run(values):
        request = build(message_class, values)
        try:
            answer = call(request, timeout=60)
            if streaming:
                list(answer)
        except grpc.RpcError as e:
            assert e.code() in ALLOWED, f"{method} answered {e.code().name}: {e.details()}\nrequest: {request}"[:3000]
        assert fuzz_daemon.proc.poll() is None, f"the daemon died on {method}:\n{fuzz_daemon.log_tail()}"
        assert not ESCAPE_MARKER.exists(), f"{method} wrote outside its directories: {request}"[:3000]

    run()


@pytest.mark.parametrize("ref", ["", "UPPERCASE", "a" * 300, "busybox:tag with space", "x@sha256:zz",
                                 "../../etc/passwd", "registry:port/x", "a\x00b"])
def test_pull_of_an_invalid_reference_is_invalid_argument(fuzz_daemon, ref):
    with pytest.raises(grpc.RpcError) as e:
        fuzz_daemon.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
