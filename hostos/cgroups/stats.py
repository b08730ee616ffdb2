"""Cumulative CPU and memory figures of a cgroup, read from the v1 or the v2 files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hostos.cgroups.layout import Layout, layout


@dataclass(frozen=True)
class Stats:
    timestamp_ns: int
    cpu_usage_ns: int | None = None
    memory_usage: int | None = None
    memory_working_set: int | None = None
    memory_rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    memory_limit: int | None = None
    pids: int | None = None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


_UNLIMITED_V1 = 1 << 62


def read_stats(cgroups_path: str, lay: Layout | None = None) -> Stats:
    """Cumulative CPU time and memory figures of a cgroup, as kubelet's summary API wants them."""
    lay = lay or layout()
    relative = cgroups_path.strip("/")
    now = time.time_ns()
    if lay.is_v2:
        assert lay.unified is not None
        base = lay.unified / relative
        cpu = _read_kv(base / "cpu.stat")
        mem = _read_kv(base / "memory.stat")
        usage = _read_int(base / "memory.current")
        return Stats(
            timestamp_ns=now,
            cpu_usage_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
            memory_usage=usage,
            memory_working_set=max(0, usage - mem.get("inactive_file", 0)) if usage is not None else None,
            memory_rss=mem.get("anon"),
            page_faults=mem.get("pgfault"),
            major_page_faults=mem.get("pgmajfault"),
            memory_limit=_read_int(base / "memory.max"),
            pids=_read_int(base / "pids.current"),
        )
    cpuacct = lay.v1.get("cpuacct")
    memory = lay.v1.get("memory")
    pids = lay.v1.get("pids")
    usage = _read_int(memory / relative / "memory.usage_in_bytes") if memory else None
    mem = _read_kv(memory / relative / "memory.stat") if memory else {}
    limit = _read_int(memory / relative / "memory.limit_in_bytes") if memory else None
    return Stats(
        timestamp_ns=now,
        cpu_usage_ns=_read_int(cpuacct / relative / "cpuacct.usage") if cpuacct else None,
        memory_usage=usage,
        memory_working_set=max(0, usage - mem.get("total_inactive_file", 0)) if usage is not None else None,
        memory_rss=mem.get("total_rss"),
        page_faults=mem.get("total_pgfault"),
        major_page_faults=mem.get("total_pgmajfault"),
        memory_limit=limit if limit is not None and limit < _UNLIMITED_V1 else None,
        pids=_read_int(pids / relative / "pids.current") if pids else None,
    )
