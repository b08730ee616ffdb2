"""Resource limits written straight into a cgroup's files, v1 or v2: for the pod-level cgroup, which no OCI
runtime manages (`runc update` only knows containers). Values follow CRI's LinuxContainerResources; 0 or ""
leaves a setting as it is.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hostos.cgroups.layout import Layout, layout

log = logging.getLogger(__name__)

_V2_DEFAULT_PERIOD = 100_000
_SWAP_FILES = {"memory.memsw.limit_in_bytes", "memory.swap.max"}
# Names that become file names in the cgroup directory: nothing that could leave it.
_UNIFIED_KEY = re.compile(r"[a-z][a-z0-9_]*\.[a-z0-9_.]+")
_PAGE_SIZE = re.compile(r"[0-9]+[KMG]B")


@dataclass(frozen=True)
class Limits:
    cpu_period: int = 0
    cpu_quota: int = 0          # -1: unlimited
    cpu_shares: int = 0
    memory: int = 0             # bytes
    memory_swap: int = 0        # memory plus swap, as CRI gives it; -1: unlimited swap
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepages: tuple[tuple[str, int], ...] = ()   # (page size such as "2MB", bytes)
    unified: dict[str, str] = field(default_factory=dict)


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000], the conversion runc and crun use."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def planned_writes(limits: Limits, lay: Layout) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order to write them; controller "" is the v2 hierarchy. ValueError for a
    unified key or hugepage size that is not a cgroup file name."""
    for key in limits.unified:
        if not _UNIFIED_KEY.fullmatch(key) or ".." in key:
            raise ValueError(f"unified key {key!r} is not a cgroup interface file name (controller.setting)")
        if key.startswith("cgroup."):  # cgroup.procs would move any process of the host into the pod's cgroup
            raise ValueError(f"unified key {key!r} is a core cgroup file, not a controller's limit")
    for size, _ in limits.hugepages:
        if not _PAGE_SIZE.fullmatch(size):
            raise ValueError(f"hugepage size {size!r} is not a page size such as 2MB or 1GB")
    out: list[tuple[str, str, str]] = []
    if lay.is_v2:
        if limits.cpu_quota or limits.cpu_period:
            quota = "max" if limits.cpu_quota <= 0 else str(limits.cpu_quota)
            out.append(("", "cpu.max", f"{quota} {limits.cpu_period or _V2_DEFAULT_PERIOD}"))
        if limits.cpu_shares:
            out.append(("", "cpu.weight", str(shares_to_weight(limits.cpu_shares))))
        if limits.memory:
            out.append(("", "memory.max", str(limits.memory)))
            if limits.memory_swap:
                swap = "max" if limits.memory_swap < 0 else str(max(0, limits.memory_swap - limits.memory))
                out.append(("", "memory.swap.max", swap))
        for name, value in (("cpuset.cpus", limits.cpuset_cpus), ("cpuset.mems", limits.cpuset_mems)):
            if value:
                out.append(("", name, value))
        out += [("", f"hugetlb.{size}.max", str(limit)) for size, limit in limits.hugepages]
        out += [("", name, value) for name, value in limits.unified.items()]
        return out
    if limits.unified:
        raise ValueError(f"unified cgroup settings {sorted(limits.unified)} need cgroup v2; this host runs v1")
    if limits.cpu_period:
        out.append(("cpu", "cpu.cfs_period_us", str(limits.cpu_period)))
    if limits.cpu_quota:
        out.append(("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota)))
    if limits.cpu_shares:
        out.append(("cpu", "cpu.shares", str(limits.cpu_shares)))
    if limits.memory:
        out.append(("memory", "memory.limit_in_bytes", str(limits.memory)))
        if limits.memory_swap:
            out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_swap)))
    for name, value in (("cpuset.cpus", limits.cpuset_cpus), ("cpuset.mems", limits.cpuset_mems)):
        if value:
            out.append(("cpuset", name, value))
    out += [("hugetlb", f"hugetlb.{size}.limit_in_bytes", str(limit)) for size, limit in limits.hugepages]
    return out


def apply(cgroups_path: str, limits: Limits, lay: Layout | None = None) -> list[str]:
    """Write the limits into the cgroup; return the files written. OSError names the file and the value; the
    files written before the one refused get their previous values back, so that a failed resize leaves the
    cgroup as it was.

    v1 wants memory <= memory+swap at every step: when a write is refused (EINVAL), the pair is written the
    other way round, as runc does when it lowers or raises both.
    """
    return apply_undoable(cgroups_path, limits, lay)[0]


def apply_undoable(cgroups_path: str, limits: Limits,
                   lay: Layout | None = None) -> tuple[list[str], Callable[[], None]]:
    """apply(), and a function that puts back what the files held before (for a step after it that fails)."""
    lay = lay or layout()
    relative = cgroups_path.strip("/")
    paths = []
    for controller, name, value in planned_writes(limits, lay):
        mount = lay.unified if controller == "" else lay.v1.get(controller)
        if mount is None:
            raise OSError(errno.ENOENT, f"no {controller or 'cgroup2'} hierarchy is mounted for {name}")
        paths.append((mount / relative / name, value))
    # Without swap accounting (v1 without swapaccount=1) there is no swap limit to write.
    pending = [(p, v) for p, v in paths if p.name not in _SWAP_FILES or p.exists()]
    before = {p: _read(p) for p, _ in pending}
    written: list[str] = []
    try:
        _write_all(pending, written)
    except OSError:
        restore = [(Path(p), old) for p in written if (old := before[Path(p)]) is not None]
        try:
            _write_all(restore, [])
        except OSError as e:
            log.warning("restoring %s after a failed resize: %s", os.path.dirname(written[0]), e.strerror or e)
        raise

    def undo() -> None:
        _write_all([(Path(p), old) for p in reversed(written) if (old := before[Path(p)]) is not None], [])
    return written, undo


def _unreclaimable(cgroup_dir: Path) -> int | None:
    """What a v2 cgroup uses that reclaim cannot take back: memory.current less its page cache (memory.stat `file`,
    except tmpfs/shm which only swap can free) and its reclaimable slab. None when it may swap (then the kernel
    can page out instead of killing) or the files are not there."""
    try:
        if (cgroup_dir / "memory.swap.max").read_text().strip() != "0" and _host_swap():
            return None
        current = int((cgroup_dir / "memory.current").read_text())
        stat = dict(line.split()[:2] for line in (cgroup_dir / "memory.stat").read_text().splitlines() if line)
        return current - int(stat["file"]) + int(stat["shmem"]) - int(stat.get("slab_reclaimable", 0))
    except (OSError, ValueError, KeyError):
        return None


def _host_swap() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def _refuse_v2_shrink_below_use(path: Path, value: str) -> None:
    """v1 refuses a memory limit it cannot shrink to (EBUSY); v2 takes it and OOM-kills in the cgroup until the
    usage fits. A resize must not kill a pod: below what reclaim could free, refuse it the way v1 does."""
    if path.name != "memory.max" or not value.isdigit():
        return
    needed = _unreclaimable(path.parent)
    if needed is not None and int(value) < needed:
        raise OSError(errno.EBUSY, f"writing {value} to {path}: the cgroup uses {needed} bytes that reclaim cannot "
                                   "free (cgroup v2 would OOM-kill its processes to fit)")


def refuse_memory_shrink_below_use(cgroups_path: str, limit: int, lay: Layout | None = None) -> None:
    """For a limit another program writes (the OCI runtime's `update`): raise OSError(EBUSY) when cgroup v2 would
    OOM-kill in ``cgroups_path`` to fit ``limit``, as the pod resize refuses it (v1's kernel refuses by itself)."""
    lay = lay or layout()
    if lay.is_v2 and lay.unified is not None and limit > 0:
        _refuse_v2_shrink_below_use(lay.unified / cgroups_path.strip("/") / "memory.max", str(limit))


def _write_all(pending: list[tuple[Path, str]], written: list[str]) -> None:
    """Write in order, appending each file written to `written` (also when a later write fails)."""
    pending = list(pending)
    while pending:
        path, value = pending.pop(0)
        try:
            _refuse_v2_shrink_below_use(path, value)
            _write(path, value)
        except OSError as e:
            partner = _swap_partner(path, pending)
            if e.errno != errno.EINVAL or partner is None:
                raise
            pending.remove(partner)
            _write(*partner)
            written.append(str(partner[0]))
            _write(path, value)
        written.append(str(path))


def _read(path: Path) -> str | None:
    """A limit file's value as it can be written back (v1 and v2 read back what they take), or None."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _swap_partner(path: Path, pending: list[tuple[Path, str]]) -> tuple[Path, str] | None:
    if path.name != "memory.limit_in_bytes":
        return None
    return next((p for p in pending if p[0].name == "memory.memsw.limit_in_bytes"), None)


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise OSError(e.errno, f"writing {value} to {path}: {e.strerror}") from None
