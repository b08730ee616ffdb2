"""cgroupfs paths, stats and removal for cgroup v1 (one hierarchy per controller) and v2 (unified)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Layout:
    """Where each hierarchy is mounted: ``unified`` for v2, ``v1`` controller -> mount point otherwise."""

    unified: Path | None
    v1: dict[str, Path]

    @property
    def is_v2(self) -> bool:
        return not self.v1 and self.unified is not None


def parse_mountinfo(text: str) -> Layout:
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, super_options = rfields[0], rfields[2]
        mount_point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2" and unified is None:
            unified = mount_point
        elif fstype == "cgroup":
            for option in super_options.split(","):
                if option in _V1_CONTROLLERS:
                    v1.setdefault(option, mount_point)
    return Layout(unified, v1)


_V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
                   "net_cls", "net_prio", "perf_event", "rdma", "misc"}


@lru_cache(maxsize=1)
def layout() -> Layout:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def hierarchies(lay: Layout | None = None) -> list[Path]:
    """Mount points of every hierarchy a container's cgroup lives in."""
    lay = lay or layout()
    if lay.is_v2:
        return [lay.unified]
    mounts = list(dict.fromkeys(lay.v1.values()))
    named = CGROUP_ROOT / "systemd"
    if named.is_dir() and named not in mounts:
        mounts.append(named)
    if lay.unified is not None:  # hybrid: runc mirrors the cgroup in the unified hierarchy too
        mounts.append(lay.unified)
    return mounts


def cgroup_dirs(cgroups_path: str, lay: Layout | None = None) -> list[Path]:
    """Every directory that backs ``cgroups_path`` (one per mounted hierarchy)."""
    relative = cgroups_path.strip("/")
    return [m / relative for m in hierarchies(lay)]


def place(pid: int, cgroups_path: str, lay: Layout | None = None) -> None:
    """Create ``cgroups_path`` in every hierarchy and move ``pid`` into it.

    A new v1 cpuset cgroup starts with no cpus and mems, which refuses every task: it gets its parent's.
    """
    parts = [p for p in cgroups_path.split("/") if p]
    if not parts or ".." in parts:
        raise ValueError(f"cgroup path {cgroups_path!r} must be a non-empty path below the root")
    for mount in hierarchies(lay):
        current = mount
        for part in parts:
            parent, current = current, current / part
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                continue
            if (parent / "cpuset.cpus").exists():
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (current / name).write_text((parent / name).read_text())
        (current / "cgroup.procs").write_text(str(pid))


def remove(cgroups_path: str, lay: Layout | None = None) -> list[str]:
    """rmdir the cgroup (and its now-empty children) in every hierarchy; returns the paths it could not remove."""
    if not cgroups_path.strip("/"):
        return []
    failed = []
    for directory in cgroup_dirs(cgroups_path, lay):
        if not _rmdir_tree(directory):
            failed.append(str(directory))
    return failed


def _rmdir_tree(directory: Path) -> bool:
    try:
        children = [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return True
    ok = all(_rmdir_tree(Path(child)) for child in children)
    for _ in range(5):
        try:
            os.rmdir(directory)
            return ok
        except FileNotFoundError:
            return ok
        except OSError:  # EBUSY while the last task is still leaving
            time.sleep(0.01)
    return False


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


def swap_accounting(lay: Layout | None = None) -> bool:
    """Whether memory+swap limits can be set (v1 needs swapaccount=1, v2 memory.swap.max)."""
    lay = lay or layout()
    if lay.is_v2:
        return (lay.unified / "memory.swap.max").exists() or any(lay.unified.glob("*/memory.swap.max"))
    memory = lay.v1.get("memory")
    return bool(memory and (memory / "memory.memsw.limit_in_bytes").exists())


def crun_hybrid_problem(lay: Layout | None = None) -> str | None:
    """crun refuses a hybrid host while cgroup2 still owns a controller; say which and how to move it to v1."""
    lay = lay or layout()
    if lay.is_v2 or lay.unified is None or not lay.v1:
        return None
    try:
        controllers = (lay.unified / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not controllers:
        return None
    fixes = "; ".join(f"mkdir -p {CGROUP_ROOT / c} && mount -t cgroup -o {c} cgroup {CGROUP_ROOT / c}"
                      for c in controllers)
    return (f"crun cannot run on this cgroup v1 hybrid host: cgroup2 at {lay.unified} still owns "
            f"{', '.join(controllers)}; mount them under v1: {fixes}")


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """/proc/<pid>/net/dev without the loopback: what a pod sent and received."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) < 16 or name.strip() == "lo":
            continue
        out.append(InterfaceStats(name.strip(), int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10])))
    return out


def network_stats(pid: int) -> list[InterfaceStats]:
    """Interfaces of the network namespace ``pid`` lives in; empty when the process is gone."""
    try:
        return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
    except OSError:
        return []


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _populated(directory: Path) -> bool:
    try:
        return "populated 1" in (directory / "cgroup.events").read_text()
    except OSError:
        return False


def kill_all(cgroups_path: str, timeout: float = 1.0, lay: Layout | None = None) -> bool:
    """SIGKILL every process left in the cgroup and wait (1 ms steps) until it is empty; False on timeout.

    An exited container can leave background children behind in a shared pid namespace. The runtimes kill them
    too, but then poll the cgroup in 10 ms steps before they can remove it: emptying it first makes their
    delete quick.
    """
    import signal

    if not cgroups_path.strip("/"):
        return True
    dirs = [d for d in cgroup_dirs(cgroups_path, lay) if d.is_dir()]
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for d in dirs for pid in _procs(d)}
        if not pids and not any(_populated(d) for d in dirs):
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
