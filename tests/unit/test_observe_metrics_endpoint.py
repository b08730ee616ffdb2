"""The metrics endpoint under odd and hostile requests: each gets a status or a closed connection, none a logged
traceback, and the endpoint goes on serving scrapes."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from cri.observe.metrics import REQUEST_HEAD_LIMIT, Metrics


def _runtime():
    empty = SimpleNamespace(list=lambda: [], find=lambda ref: None)
    events = SimpleNamespace(listen=lambda listener: None, unlisten=lambda listener: None)
    return SimpleNamespace(containers=empty, sandboxes=empty, events=events)


async def _ask(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await reader.read()
    writer.close()
    return answer


def test_odd_requests_get_a_status_and_scrapes_go_on(caplog):
    caplog.set_level(logging.INFO)

    async def run():
        metrics = Metrics(_runtime(), port=0)
        await metrics.start()
        try:
            return [await _ask(metrics.port, data) for data in (
                b"GET http://[ HTTP/1.1\r\n\r\n",
                b"POST /metrics HTTP/1.1\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nX: " + b"y" * REQUEST_HEAD_LIMIT + b"\r\n\r\n",
                b"\x00\xff\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n\r\n")]
        finally:
            await metrics.stop()

    bad_target, post, too_long, garbage, scrape = asyncio.run(run())
    assert bad_target.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert too_long == b""  # over the head limit: closed unanswered
    assert garbage.startswith(b"HTTP/1.1 405 ")
    assert scrape.startswith(b"HTTP/1.1 200 OK")
    assert b"pycri_containers" in scrape
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_no_created_series_beside_the_counters_and_histograms():
    """prometheus_client adds a *_created gauge per labelled child; CRI-O's (Go) exposition has none and
    docs/metrics.md promises none: they would double the series of every labelled counter."""
    from prometheus_client.exposition import generate_latest

    metrics = Metrics(_runtime(), port=0)
    metrics.rpc("RunPodSandbox")("OK", 0.5)
    metrics.rpc("StopContainer")("NOT_FOUND", 0.001)
    metrics.pulled("docker.io/library/busybox", 1.0, 10)
    text = generate_latest(metrics.registry).decode()
    assert 'pycri_operations_total{code="OK",operation="RunPodSandbox"} 1.0' in text
    assert "_created" not in text
