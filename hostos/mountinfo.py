"""/proc/<pid>/mountinfo, parsed once the same way for every caller (proc(5))."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as \\ooo octal escapes; undo every one."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    root: str                    # the path inside the filesystem that is mounted here
    mount_point: str
    options: tuple[str, ...]     # per-mount: rw/ro, nosuid, ...
    tags: tuple[str, ...]        # optional fields: shared:N, master:N, propagate_from:N, unbindable
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def writable(self) -> bool:
        return "rw" in self.options

    @property
    def propagation(self) -> set[str]:
        """The tags without their peer group numbers: {"shared"}, {"master"}, set() for private."""
        return {tag.split(":")[0] for tag in self.tags}


def parse(text: str) -> list[Mount]:
    """Every well-formed line of a mountinfo file, in the kernel's order (later mounts stack on earlier ones)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(" "), right.split(" ")
        if not sep or len(fields) < 6 or len(rfields) < 3:
            continue
        try:
            ids = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        mounts.append(Mount(
            mount_id=ids[0], parent_id=ids[1], root=unescape(fields[3]), mount_point=unescape(fields[4]),
            options=tuple(fields[5].split(",")), tags=tuple(fields[6:]), fstype=rfields[0],
            source=unescape(rfields[1]), super_options=tuple(rfields[2].split(","))))
    return mounts


def read(pid: int | str = "self") -> list[Mount]:
    """The mounts `pid` sees; paths decoded as os.fsdecode would, so they compare equal to what os returns."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return parse(f.read().decode(errors="surrogateescape"))


def mounts_below(directory: str | os.PathLike[str], mounts: list[Mount] | None = None) -> list[str]:
    """Mount points strictly below `directory`, deepest first (so each comes off before what it sits on)."""
    prefix = os.fspath(directory).rstrip("/") + "/"
    points = {m.mount_point for m in (read() if mounts is None else mounts) if m.mount_point.startswith(prefix)}
    return sorted(points, key=len, reverse=True)


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds `path` (the last one mounted on the longest matching mount point wins)."""
    best: Mount | None = None
    for m in mounts:
        point = m.mount_point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = m
    return best
