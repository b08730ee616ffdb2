"""cgroups v1 and v2: the layout of this host's hierarchies, our cgroup directories in them, their statistics, and
the manager (cgroupfs or systemd) that makes them (hostos.cgroups.driver, hostos.cgroups.systemd)."""

from hostos.cgroups.layout import (CGROUP_ROOT, Layout, cgroup_dirs, clean_path, crun_hybrid_problem, describe,
                                   hierarchies, layout, layout_of, parse_mountinfo, swap_accounting)
from hostos.cgroups.stats import Pressure, PsiData, Stats, oom_kills, parse_pressure, read_stats, total
from hostos.cgroups.tree import (CgroupBusy, create, find, kill, kill_all, move, place, procs, remove,
                                 remove_created, remove_now)

__all__ = [
    "CGROUP_ROOT", "CgroupBusy", "Layout", "Pressure", "PsiData", "Stats", "cgroup_dirs", "clean_path", "create",
    "crun_hybrid_problem", "describe", "find", "hierarchies", "kill", "kill_all", "layout", "layout_of", "move",
    "oom_kills",
    "parse_mountinfo", "parse_pressure", "place", "procs", "read_stats", "remove", "remove_created", "remove_now",
    "swap_accounting", "total",
]
