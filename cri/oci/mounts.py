"""Whether a host path's mount can carry the propagation a container mount asks for (pure, over mountinfo)."""

from __future__ import annotations

import os
from pathlib import Path


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_of(path: str, mountinfo_text: str) -> tuple[str, set[str]]:
    """The mount point holding ``path`` (the last mounted wins) and its propagation tags (shared, master)."""
    best, tags = "/", set()
    for line in mountinfo_text.splitlines():
        left, _, _ = line.partition(" - ")
        fields = left.split()
        if len(fields) < 6:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best = point
            tags = {f.split(":")[0] for f in fields[6:]}
    return best, tags


def propagation_problem(host_path: str, propagation: str, mountinfo_text: str) -> str | None:
    """Why ``host_path`` cannot be mounted with ``propagation`` (rshared needs a shared host mount, rslave a shared
    or slave one), or None when it can."""
    if propagation == "private":
        return None
    point, tags = mount_of(host_path, mountinfo_text)
    if propagation == "rshared" and "shared" not in tags:
        return (f"mount propagation rshared (Bidirectional) needs {host_path} on a shared mount, but {point} is not "
                f"shared; run `mount --make-rshared {point}`")
    if propagation == "rslave" and not tags & {"shared", "master"}:
        return (f"mount propagation rslave (HostToContainer) needs {host_path} on a shared or slave mount, but "
                f"{point} is private; run `mount --make-rshared {point}`")
    return None


def host_propagation_problems(mounts: list[tuple[str, str]]) -> list[str]:
    """``propagation_problem`` for each (host path, propagation) against this process's mounts."""
    wanted = [(os.path.realpath(path), mode) for path, mode in mounts if mode != "private"]
    if not wanted:
        return []
    text = Path("/proc/self/mountinfo").read_text()
    return [problem for path, mode in wanted if (problem := propagation_problem(path, mode, text))]
