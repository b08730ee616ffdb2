"""Where the cgroup hierarchies are mounted: v2 (unified) or v1 (one hierarchy per controller, maybe hybrid)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from hostos import mountinfo

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
                   "net_cls", "net_prio", "perf_event", "rdma", "misc"}


@dataclass(frozen=True)
class Layout:
    """``unified``: the cgroup2 mount; ``v1``: controller -> mount point; ``named``: v1 hierarchies without a
    controller (name=systemd). Only writable mounts count: a read-only one can hold no cgroup of ours."""

    unified: Path | None
    v1: dict[str, Path]
    named: tuple[Path, ...] = field(default=())

    @property
    def is_v2(self) -> bool:
        return not self.v1 and self.unified is not None

    @cached_property
    def mounts(self) -> tuple[Path, ...]:
        """Mount points of every hierarchy a cgroup of ours lives in (hybrid: runc mirrors it in cgroup2 too).
        Worked out once: every cgroup creation, move and emptying asks, from worker threads (py-spy of a 50-pod
        wave: the comparisons of Paths here were GIL time the event loop waited for)."""
        if self.is_v2:
            return (self.unified,)  # type: ignore[return-value]
        v1 = list(dict.fromkeys(self.v1.values()))
        mounts = v1 + [n for n in self.named if n not in v1]
        if self.unified is not None:
            mounts.append(self.unified)
        return tuple(mounts)

    @cached_property
    def mount_paths(self) -> tuple[str, ...]:
        """``mounts`` as strings, for os calls."""
        return tuple(str(m) for m in self.mounts)


def layout_of(mounts: list[mountinfo.Mount]) -> Layout:
    unified: Path | None = None
    v1: dict[str, Path] = {}
    named: list[Path] = []
    for m in mounts:
        if not m.writable:
            continue
        if m.fstype == "cgroup2" and unified is None:
            unified = Path(m.mount_point)
        elif m.fstype == "cgroup":
            controllers = [o for o in m.super_options if o in _V1_CONTROLLERS]
            for controller in controllers:
                v1.setdefault(controller, Path(m.mount_point))
            if not controllers and any(o.startswith("name=") for o in m.super_options):
                named.append(Path(m.mount_point))
    return Layout(unified, v1, tuple(dict.fromkeys(named)))


def parse_mountinfo(text: str) -> Layout:
    return layout_of(mountinfo.parse(text))


@lru_cache(maxsize=1)
def layout() -> Layout:
    """This host's layout, read once per process."""
    return layout_of(mountinfo.read())


def hierarchies(lay: Layout | None = None) -> list[Path]:
    """Mount points of every hierarchy a cgroup of ours lives in (hybrid: runc mirrors it in cgroup2 too)."""
    return list((lay or layout()).mounts)


def clean_path(path: str) -> str:
    """A normalized absolute cgroup path; ValueError for one that escapes the hierarchy."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"cgroup path {path!r} must not contain '..'")
    return "/" + "/".join(parts)


def cgroup_dirs(cgroups_path: str, lay: Layout | None = None) -> list[Path]:
    """Every directory that backs ``cgroups_path`` (one per mounted hierarchy)."""
    relative = cgroups_path.strip("/")
    return [m / relative for m in hierarchies(lay)]


def describe(lay: Layout | None = None) -> dict[str, object]:
    """What cgroups give on this host, for operators (verbose Status): version, swap accounting, PSI."""
    lay = lay or layout()
    version = "v2" if lay.is_v2 else "hybrid" if lay.unified is not None else "v1"
    return {"version": version, "swap_accounting": swap_accounting(lay),
            "pressure": lay.is_v2 and Path("/proc/pressure/cpu").exists()}  # per-cgroup PSI exists only on v2


def swap_accounting(lay: Layout | None = None) -> bool:
    """Whether memory+swap limits can be set (v1 needs swapaccount=1, v2 memory.swap.max)."""
    lay = lay or layout()
    if lay.is_v2:
        assert lay.unified is not None
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
