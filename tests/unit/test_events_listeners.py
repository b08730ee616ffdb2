"""The event bus's two kinds of consumer: GetContainerEvents streams get each event with a copy of its pod's record;
in-process listeners (the metrics) see each event at once and cost no copy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from cri.core import events as ev
from cri.observe.metrics import Metrics


def _bus(copies: list[str]) -> ev.EventBus:
    bus = ev.EventBus()
    bus.set_sandbox_snapshot(lambda sandbox_id: copies.append(sandbox_id) or {"id": sandbox_id})
    return bus


def test_metrics_count_events_without_copying_the_pod():
    copies: list[str] = []
    bus = _bus(copies)
    container = SimpleNamespace(name="app", created_at=1_000_000_000, started_at=3_000_000_000, reason="OOMKilled")
    rt = SimpleNamespace(containers=SimpleNamespace(list=lambda: [], find=lambda ref: container),
                         sandboxes=SimpleNamespace(list=lambda: [], find=lambda ref: None), events=bus)

    async def run() -> Metrics:
        metrics = Metrics(rt, port=0)
        await metrics.start()
        try:
            bus.publish(ev.ContainerEvent("c1", "p1", ev.STARTED, 1))
            bus.publish(ev.ContainerEvent("c1", "p1", ev.STOPPED, 2))
            await asyncio.sleep(0.01)
        finally:
            await metrics.stop()
        bus.publish(ev.ContainerEvent("c1", "p1", ev.STOPPED, 3))  # stopped metrics count no more
        return metrics

    metrics = asyncio.run(run())
    assert copies == []
    assert metrics.registry.get_sample_value("pycri_containers_oom_total") == 1
    assert metrics.registry.get_sample_value("pycri_container_start_latency_seconds_sum") == 2.0


def test_a_stream_still_gets_the_pod_and_a_failing_listener_stops_nothing():
    copies: list[str] = []
    bus = _bus(copies)
    seen: list[ev.ContainerEvent] = []
    bus.listen(lambda event: 1 / 0)
    bus.listen(seen.append)

    async def run() -> ev.ContainerEvent:
        queue = bus.subscribe()
        bus.publish(ev.ContainerEvent("c1", "p1", ev.CREATED, 1))
        return await queue.get()

    streamed = asyncio.run(run())
    assert streamed.sandbox == {"id": "p1"} and copies == ["p1"]
    assert [e.container_id for e in seen] == ["c1"]
