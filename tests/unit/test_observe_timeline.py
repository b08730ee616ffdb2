"""The pod start timeline: the ring's bounds, the table and the SVG drawn from it, phases as spans."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from cri.observe import trace
from cri.observe.timeline import Timeline, render_svg, render_table


def test_the_ring_keeps_the_newest_pods_and_bounds_phases_per_pod():
    ring = Timeline(max_pods=2, max_phases=3)
    for pod in ("a" * 64, "b" * 64, "c" * 64):
        ring.name(pod, f"ns/{pod[0]}")
        for i in range(5):
            ring.add(pod, "sandbox", f"p{i}", 100.0 + i, 100.5 + i)
    pods = ring.snapshot()
    assert [p["name"] for p in pods] == ["ns/b", "ns/c"]
    assert all(len(p["phases"]) == 3 for p in pods)
    assert [p["id"] for p in ring.snapshot("ccc")] == ["c" * 64]
    assert [p["id"] for p in ring.snapshot("b")] == ["b" * 64]  # a bare name or an id prefix
    assert ring.snapshot("ns/c")[0]["id"] == "c" * 64


def example() -> list[dict]:
    ring = Timeline()
    pod = "1" * 64
    ring.name(pod, "default/web")
    ring.add(pod, "sandbox", "namespaces", 10.000, 10.010)
    ring.add(pod, "sandbox", "cni_add", 10.010, 10.060)
    ring.add(pod, "nginx:1", "pull", 10.070, 10.570)
    ring.add(pod, "app", "spec", 10.600, 10.602)
    ring.add(pod, "app", "runtime_create", 10.602, 10.650, failed=True)
    return ring.snapshot()


def test_the_table_gives_offsets_and_durations_in_start_order():
    lines = render_table(example()).splitlines()
    assert lines[0].startswith("POD default/web 1111111111111")
    assert "650.0 ms from first to last phase" in lines[0]
    rows = [line.split() for line in lines[2:7]]
    assert [r[:2] for r in rows] == [["sandbox", "namespaces"], ["sandbox", "cni_add"], ["nginx:1", "pull"],
                                      ["app", "spec"], ["app", "runtime_create"]]
    assert rows[1][2:4] == ["10.0", "50.0"] and rows[2][2:4] == ["70.0", "500.0"]
    assert rows[4][-1] == "FAILED"


def test_the_svg_is_well_formed_with_one_bar_per_phase_scaled_to_the_pod():
    svg = render_svg(example())
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = root.findall(".//s:rect[@class='bar']", ns)
    assert len(bars) == 5
    widths = [float(b.get("width")) for b in bars]
    assert widths[2] == pytest.approx(640 * 0.5 / 0.65, rel=1e-3)  # the pull: 500 of 650 ms
    assert float(bars[1].get("x")) < float(bars[2].get("x"))
    assert bars[4].get("stroke") == "#d00"
    assert "no pod start recorded yet" in render_svg([])


def test_phases_become_child_spans_of_the_current_one_and_failures_are_marked():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cri.observe.tracing import Tracer

    exporter = InMemorySpanExporter()
    tracer = Tracer(exporter, processor=SimpleSpanProcessor(exporter))
    trace.set_tracer(tracer)
    try:
        call = tracer.rpc("RunPodSandbox", [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                                            ("user-agent", "kubelet")])
        with trace.phase("namespaces", pod="p" * 64):
            pass
        with pytest.raises(OSError):
            with trace.phase("cni_add", pod="p" * 64):
                raise OSError("plugin failed")
        trace.record("download", 1.0, 2.0, "p" * 64, "img", trace.current_context())
        call.close(code="OK")
    finally:
        trace.set_tracer(None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["RunPodSandbox"]
    assert format(root.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(root.parent.span_id, "016x") == "b7ad6b7169203331"
    for name in ("namespaces", "cni_add", "download"):
        assert spans[name].parent.span_id == root.context.span_id
        assert spans[name].attributes["pycri.pod_sandbox_id"] == "p" * 64
    assert not spans["cni_add"].status.is_ok and spans["namespaces"].status.is_ok
    assert spans["download"].end_time - spans["download"].start_time == 1_000_000_000
    failed = [p for p in trace.timeline.snapshot("p" * 64)[0]["phases"] if p["failed"]]
    assert [p["phase"] for p in failed] == ["cni_add"]


def test_without_a_tracer_a_phase_reports_to_its_observer_and_imports_no_opentelemetry():
    import subprocess
    import sys

    code = ("import sys; from cri.observe import trace; seen = []; "
            "trace.observers['cni_add'] = lambda s, f: seen.append(f)\n"
            "with trace.phase('cni_add', pod='x'): pass\n"
            "assert seen == [False]; assert not [m for m in sys.modules if m.startswith('opentelemetry')]")
    subprocess.run([sys.executable, "-c", code], check=True)
