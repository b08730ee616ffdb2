"""Prometheus metrics on http://127.0.0.1:9090/metrics (`[metrics]`), named after CRI-O's
container_runtime_crio_* set where it has one (docs/metrics.md has the mapping).

The endpoint is served on the daemon's event loop, so the collectors read the managers' indexes without
locks; prometheus_client picks the text or OpenMetrics format from the Accept header. RPCs report through
a recorder bound once per RPC name (see `Metrics.rpc`), so the per-call cost is two dict-free observations.

The counters and histograms are kept here (`_Counter`, `_Histogram`), not in prometheus_client's: importing any
part of prometheus_client imports all of it (its HTTP servers, urllib.request, email: 36 of the idle daemon's
modules, 1.7 MB of its RSS), so it is imported at the first scrape, which turns them into its metric families.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import threading
from bisect import bisect_left
from typing import Callable, Iterator, Sequence, TYPE_CHECKING
from urllib.parse import urlsplit

from cri.core import events as ev
from cri.observe import trace

if TYPE_CHECKING:  # (the handler context imports the managers)
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from cri.context import Runtime

log = logging.getLogger(__name__)

PREFIX = "pycri"
# From 100 µs (a List on a quiet daemon) to a minute (a slow pull or a stop with a grace period).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REQUEST_HEAD_LIMIT = 8192
REQUEST_TIMEOUT = 5.0


class _CounterChild:
    __slots__ = ("value", "_lock")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()  # a pull's report comes from its worker thread

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with self._lock:
            self.value += amount


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "sum", "_lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0.0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        i = bisect_left(self._bounds, amount)  # the first bucket whose bound is >= amount (the last is +Inf)
        with self._lock:
            self.sum += amount
            self.counts[i] += 1.0


class _Family:
    """A metric and its children by label values, as prometheus_client's Counter and Histogram keep them: an
    unlabelled one has its single child from the start; `labels(*values)` makes a child at its first use."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild | _HistogramChild] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._only = self.labels()

    def _child(self) -> _CounterChild | _HistogramChild:
        raise NotImplementedError

    def labels(self, *values: object):
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._child()
        return child

    def children(self) -> list:
        with self._lock:
            return list(self._children.items())


class _Counter(_Family):
    def _child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._only.inc(amount)

    def family(self) -> Metric:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self.children():
            family.add_metric(key, child.value)
        return family


class _Histogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float]) -> None:
        self.bounds = (*(float(b) for b in buckets), math.inf)
        super().__init__(name, documentation, labelnames)

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        self._only.observe(amount)

    def family(self) -> Metric:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(bound) for bound in self.bounds]
        for key, child in self.children():
            with child._lock:
                counts, total = list(child.counts), child.sum
            cumulative, acc = [], 0.0
            for le, count in zip(les, counts, strict=True):
                acc += count
                cumulative.append((le, acc))
            family.add_metric(key, cumulative, total)
        return family


class _Families:
    """The counters and histograms above as a prometheus_client collector, in the order they were made."""

    def __init__(self, families: list[_Counter | _Histogram]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()


class _StateCollector:
    """Containers by state and pods by state, counted from the managers' indexes at scrape time."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        containers = GaugeMetricFamily(f"{PREFIX}_containers", "Containers known to pycri, by state.",
                                       labels=["state"])
        counts = {"created": 0, "running": 0, "exited": 0}
        for record in self._rt.containers.list():
            counts[record.state] = counts.get(record.state, 0) + 1
        for state, n in sorted(counts.items()):
            containers.add_metric([state], n)
        yield containers
        pods = GaugeMetricFamily(f"{PREFIX}_pods", "Pod sandboxes known to pycri, by state.", labels=["state"])
        counts = {"ready": 0, "notready": 0}
        for record in self._rt.sandboxes.list():
            counts["ready" if record.state == "ready" else "notready"] += 1
        for state, n in sorted(counts.items()):
            pods.add_metric([state], n)
        yield pods
        threads = GaugeMetricFamily("process_threads", "Threads of the daemon process (grpc's included).")
        threads.add_metric([], _thread_count())
        yield threads


def _thread_count() -> int:
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[17])
    except (OSError, IndexError, ValueError):
        return 0


class Metrics:
    """The daemon's metrics and the HTTP endpoint that serves them; a Service (start/stop)."""

    def __init__(self, rt: Runtime, address: str = "127.0.0.1", port: int = 9090) -> None:
        self._rt = rt
        self.address, self.port = address, port
        self._registry: CollectorRegistry | None = None
        self._families: list[_Counter | _Histogram] = []
        counter, histogram = self._counter, self._histogram
        self.operations = counter(f"{PREFIX}_operations", "CRI calls, by operation and gRPC status code.",
                                  ["operation", "code"])
        self.operation_errors = counter(f"{PREFIX}_operations_errors", "CRI calls that failed, by operation and "
                                        "gRPC status code.", ["operation", "code"])
        self.latency = histogram(f"{PREFIX}_operations_latency_seconds", "Latency of CRI calls, by operation.",
                                 ["operation"], buckets=LATENCY_BUCKETS)
        self.pull_bytes = counter(f"{PREFIX}_image_pulls_bytes", "Bytes downloaded by image pulls, by registry.",
                                  ["registry"])
        self.pull_success = counter(f"{PREFIX}_image_pulls_success", "Image pulls that succeeded, by registry.",
                                    ["registry"])
        self.pull_failure = counter(f"{PREFIX}_image_pulls_failure", "Image pulls that failed, by registry and "
                                    "error class.", ["registry", "error"])
        self.pull_duration = histogram(f"{PREFIX}_image_pull_duration_seconds", "Duration of image pulls, by "
                                       "registry.", ["registry"], buckets=PULL_BUCKETS)
        self.oom = counter(f"{PREFIX}_containers_oom", "Containers the kernel killed for lack of memory.")
        self.oom_by_name = counter(f"{PREFIX}_containers_oom_count", "OOM kills, by container name.", ["name"])
        self.container_start = histogram(f"{PREFIX}_container_start_latency_seconds", "From CreateContainer to "
                                         "the container running.", buckets=LATENCY_BUCKETS)
        self.pod_start = histogram(f"{PREFIX}_pod_start_latency_seconds", "Duration of a RunPodSandbox that "
                                   "succeeded.", buckets=LATENCY_BUCKETS)
        self.cni_latency = histogram(f"{PREFIX}_cni_operation_latency_seconds", "Duration of CNI ADD and DEL "
                                     "through every plugin of the network.", ["operation"],
                                     buckets=LATENCY_BUCKETS)
        self.cni_errors = counter(f"{PREFIX}_cni_operation_errors", "CNI ADD and DEL that failed.",
                                  ["operation"])
        self._server: asyncio.AbstractServer | None = None

    def _counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> _Counter:
        """A counter, exposed in the order made (as prometheus_client's registry keeps its metrics)."""
        self._families.append(counter := _Counter(name, documentation, labelnames))
        return counter

    def _histogram(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                   buckets: Sequence[float]) -> _Histogram:
        self._families.append(histogram := _Histogram(name, documentation, labelnames, buckets=buckets))
        return histogram

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry over the process, state and the families above, made at the first use
        (the first scrape; the endpoint imports prometheus_client in a worker thread first). Its families carry no
        *_created series: CRI-O exposes none."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=registry)
            registry.register(_StateCollector(self._rt))
            registry.register(_Families(self._families))
            self._registry = registry
        return self._registry

    # ---- what the rest of the daemon reports -------------------------------------------------------

    def rpc(self, operation: str) -> Callable[[str, float], None]:
        """A recorder for one RPC, its label children bound now: record(code_name, seconds)."""
        latency = self.latency.labels(operation)
        by_code: dict[str, Callable[[], None]] = {}

        def record(code: str, seconds: float) -> None:
            latency.observe(seconds)
            count = by_code.get(code)
            if count is None:
                count = by_code[code] = self._counter_for(operation, code)
            count()

        if operation == "RunPodSandbox":
            pod_start = self.pod_start

            def record_pod(code: str, seconds: float) -> None:
                record(code, seconds)
                if code == "OK":
                    pod_start.observe(seconds)

            return record_pod
        return record

    def _counter_for(self, operation: str, code: str) -> Callable[[], None]:
        total = self.operations.labels(operation, code).inc
        if code == "OK":
            return total
        errors = self.operation_errors.labels(operation, code).inc

        def both() -> None:
            total()
            errors()

        return both

    def pulled(self, reference: str, seconds: float, nbytes: int, error: str = "") -> None:
        registry = registry_of(reference)
        self.pull_bytes.labels(registry).inc(nbytes)
        if error:
            self.pull_failure.labels(registry, error).inc()
        else:
            self.pull_success.labels(registry).inc()
            self.pull_duration.labels(registry).observe(seconds)

    def cni(self, operation: str, seconds: float, failed: bool) -> None:
        self.cni_latency.labels(operation).observe(seconds)
        if failed:
            self.cni_errors.labels(operation).inc()

    # ---- lifetime ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.address, self.port,
                                                      limit=REQUEST_HEAD_LIMIT)
        except OSError as exc:
            from cri.daemon import DaemonError

            raise DaemonError(f"metrics endpoint {self.address}:{self.port}: {exc.strerror}; choose another "
                              "[metrics] port or set [metrics] enable = false") from None
        self.port = self._server.sockets[0].getsockname()[1]
        trace.observers["cni_add"] = lambda seconds, failed: self.cni("ADD", seconds, failed)
        trace.observers["cni_del"] = lambda seconds, failed: self.cni("DEL", seconds, failed)
        self._rt.events.listen(self._on_event)
        log.info("metrics on http://%s:%d/metrics", self.address, self.port)

    async def stop(self) -> None:
        trace.observers.pop("cni_add", None)
        trace.observers.pop("cni_del", None)
        self._rt.events.unlisten(self._on_event)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _on_event(self, event: ev.ContainerEvent) -> None:
        """OOM kills and container start latency, from the container's record as the event is published."""
        if event.kind not in (ev.STARTED, ev.STOPPED):
            return
        record = self._rt.containers.find(event.container_id)
        if record is None:
            return
        if event.kind == ev.STARTED and record.started_at and record.created_at:
            self.container_start.observe(max(0, record.started_at - record.created_at) / 1e9)
        elif event.kind == ev.STOPPED and record.reason == "OOMKilled":
            self.oom.inc()
            self.oom_by_name.labels(record.name).inc()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
            elif _path(target) != "/metrics":
                status, ctype, body = "404 Not Found", "text/plain", b"metrics are at /metrics\n"
            else:
                if self._registry is None:  # the first scrape: 30-40 ms of imports, off the event loop
                    await asyncio.to_thread(importlib.import_module, "prometheus_client.exposition")
                from prometheus_client.exposition import choose_encoder

                encoder, ctype = choose_encoder(headers.get("accept", ""))
                status, body = "200 OK", encoder(self.registry)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("serving a metrics scrape failed")
        finally:
            writer.close()


def _path(target: str) -> str | None:
    """The path of a request target (origin or absolute form); None for one that does not parse."""
    try:
        return urlsplit(target).path
    except ValueError:  # "http://[" and the like: a 404, not a logged traceback
        return None


def registry_of(reference: str) -> str:
    """The registry host a pull went to, as the `registry` label (docker.io for unqualified names)."""
    first = reference.split("/", 1)[0]
    if "/" in reference and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
