"""Cumulative CPU, memory, swap and pressure figures of a cgroup, and its OOM kills, from the v1 or the v2 files.

Every figure has a v1 and a v2 source where the kernel offers both; pressure (PSI) exists only in cgroup v2, and
only where the kernel has it (CONFIG_PSI, not psi=0): absent, it is None rather than zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hostos.cgroups.layout import Layout, layout


@dataclass(frozen=True)
class PsiData:
    total_us: int      # cumulative stall time
    avg10: float       # share of wall time stalled (percent) over 10 s, 60 s, 300 s
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """One <resource>.pressure file: `some` task stalled, or `full`y every task stalled."""
    some: PsiData | None
    full: PsiData | None


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
    swap_usage: int | None = None
    swap_limit: int | None = None      # None: unlimited or not accounted
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None


def parse_pressure(text: str) -> Pressure:
    """`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` lines (the cpu file of older kernels has no `full`)."""
    lines: dict[str, PsiData] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        values = dict(f.partition("=")[::2] for f in fields)
        try:
            lines[kind] = PsiData(int(values["total"]), float(values["avg10"]), float(values["avg60"]),
                                  float(values["avg300"]))
        except (KeyError, ValueError):
            continue
    return Pressure(lines.get("some"), lines.get("full"))


def _read_pressure(path: Path) -> Pressure | None:
    try:
        return parse_pressure(path.read_text())
    except OSError:  # no PSI in this kernel, or the cgroup is gone
        return None


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
            swap_usage=_read_int(base / "memory.swap.current"),
            swap_limit=_read_int(base / "memory.swap.max"),
            cpu_pressure=_read_pressure(base / "cpu.pressure"),
            memory_pressure=_read_pressure(base / "memory.pressure"),
            io_pressure=_read_pressure(base / "io.pressure"),
        )
    cpuacct = lay.v1.get("cpuacct")
    memory = lay.v1.get("memory")
    pids = lay.v1.get("pids")
    usage = _read_int(memory / relative / "memory.usage_in_bytes") if memory else None
    mem = _read_kv(memory / relative / "memory.stat") if memory else {}
    limit = _read_int(memory / relative / "memory.limit_in_bytes") if memory else None
    memsw = _read_int(memory / relative / "memory.memsw.usage_in_bytes") if memory else None  # swapaccount=1 only
    memsw_limit = _read_int(memory / relative / "memory.memsw.limit_in_bytes") if memory else None
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
        swap_usage=max(0, memsw - usage) if memsw is not None and usage is not None else None,
        swap_limit=(max(0, memsw_limit - limit) if memsw_limit is not None and limit is not None
                    and memsw_limit < _UNLIMITED_V1 else None),
    )


_SUMMED = ("cpu_usage_ns", "memory_usage", "memory_working_set", "memory_rss", "page_faults", "major_page_faults",
           "pids", "swap_usage")


def total(samples: list[Stats]) -> Stats:
    """The sum of several cgroups' figures, for a group of processes that has no cgroup of its own: a figure is
    None where no cgroup had it. Limits and pressure do not add up, so the group has none."""
    figures = {name: [v for s in samples if (v := getattr(s, name)) is not None] for name in _SUMMED}
    return Stats(timestamp_ns=max((s.timestamp_ns for s in samples), default=time.time_ns()),
                 **{name: sum(values) if values else None for name, values in figures.items()})


def oom_kills(cgroups_path: str, lay: Layout | None = None) -> int:
    """How many processes the OOM killer killed in the cgroup (v2 memory.events, v1 memory.oom_control, kernel
    4.13+); 0 when the cgroup or the counter is gone."""
    lay = lay or layout()
    relative = cgroups_path.strip("/")
    if not relative:  # the root's counters are the whole host's
        return 0
    if lay.is_v2:
        assert lay.unified is not None
        path = lay.unified / relative / "memory.events"
    elif "memory" in lay.v1:
        path = lay.v1["memory"] / relative / "memory.oom_control"
    else:
        return 0
    return _read_kv(path).get("oom_kill", 0)
