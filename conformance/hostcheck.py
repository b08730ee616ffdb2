"""What a runtime can leave behind on a host, as sets of strings that can be compared.

`snapshot()` before a run and after it; `leaks(before, after)` names whatever appeared and is
still there: mounts, network namespaces, veth devices, processes, cgroups, iptables rules, files.
The fault-injection suite, the soak test and the integration fixtures all judge by this.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNTIME_COMMS = {"conmon", "runc", "crun", "catatonit", "pycri"}


def _mounts() -> set[str]:
    with open("/proc/self/mounts") as f:
        return {line.split()[1] for line in f}


def _veths(bridge: str = "") -> set[str]:
    argv = ["ip", "-o", "link", "show", "type", "veth"] + (["master", bridge] if bridge else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _processes(scope: str = "") -> set[str]:
    """Runtime processes whose full command line names `scope` (before it is cut short for the report)."""
    out = set()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            comm = (pid_dir / "comm").read_text().strip()
            if comm in RUNTIME_COMMS or comm.startswith("runc:"):
                cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if scope in cmdline:
                    out.add(f"{pid_dir.name} {comm} {cmdline[:200]}")
        except OSError:
            pass
    return out


def _cgroups(marker: str) -> set[str]:
    """cgroup directories whose path contains `marker`, in every hierarchy (v1 and v2)."""
    found = set()
    if not marker:
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir() or hierarchy.is_symlink():
            continue
        for dirpath, dirnames, _ in os.walk(hierarchy):
            if marker in dirpath:
                found.add(dirpath)
                dirnames.clear()
    return found


def _iptables(marker: str) -> set[str]:
    if not marker:
        return set()
    try:
        out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line for line in out.splitlines() if marker in line and not line.startswith("#")}


def _files(base: Path) -> set[str]:
    return {str(p) for p in base.rglob("*")} if base.exists() else set()


def snapshot(watch_dirs: list[Path] = (), cgroup_marker: str = "", iptables_marker: str = "",
             scope: str = "", bridge: str = "") -> dict[str, set[str]]:
    """Host state that a runtime creates; `watch_dirs` are folders whose files count too.

    `scope` (a daemon's base directory) keeps only the mounts, /run/netns files and processes that name it, and
    `bridge` only the veths on that bridge, so that other runtimes on the host are not counted."""
    state = {
        "mounts": {m for m in _mounts() if scope in m},
        "netns": {str(p) for d in (Path("/run/netns"),) if d.exists() for p in d.iterdir() if scope in str(p)},
        "veth": _veths(bridge),
        "processes": _processes(scope),
        "cgroups": _cgroups(cgroup_marker),
        "iptables": _iptables(iptables_marker),
    }
    for d in watch_dirs:
        state[f"files in {d}"] = _files(Path(d))
    return state


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """What is in `after` that was not in `before`, by kind; empty when the host is as it was."""
    out = {}
    for kind, items in after.items():
        added = sorted(items - before.get(kind, set()))
        if added:
            out[kind] = added
    return out
