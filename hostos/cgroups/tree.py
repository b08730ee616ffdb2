"""Making, filling, emptying and removing cgroup directories in every hierarchy (cgroupfs driver)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from pathlib import Path

from hostos.cgroups.layout import Layout, cgroup_dirs, clean_path, hierarchies, layout


class CgroupBusy(RuntimeError):
    """A cgroup of ours kept processes past the time allowed for them to leave."""


def _parts(cgroups_path: str) -> list[str]:
    parts = clean_path(cgroups_path).strip("/").split("/")
    if parts == [""]:
        raise ValueError(f"cgroup path {cgroups_path!r} must be a non-empty path below the root")
    return parts


def create(cgroups_path: str, lay: Layout | None = None) -> list[str]:
    """Create ``cgroups_path`` in every hierarchy; return the directories that did not exist before, top-down.

    A new v1 cpuset cgroup starts with no cpus and mems, which refuses every task (ENOSPC): it gets its parent's
    (a v2 one needs nothing, and its cpuset files may not even be there: the parent need not enable cpuset). An
    existing one still empty is seeded too: a concurrent create may have made it and not yet seeded it (ten pods
    started at once saw ENOSPC). On failure what was made is removed again and the OSError propagates.
    In the other hierarchies the leaf is made first and its parents only when missing: a container's cgroup
    comes after its pod's, and each mkdir and look is GIL time the event loop waits for (py-spy of a 50-pod wave:
    this was a quarter of the worker threads' GIL samples on this host's 13 v1 hierarchies).
    """
    created: list[str] = []
    parts = _parts(cgroups_path)
    lay = lay or layout()
    cpuset = None if lay.is_v2 else lay.v1.get("cpuset")
    cpuset_path = str(cpuset) if cpuset is not None else None
    try:
        for mount, path in zip(lay.mounts, lay.mount_paths, strict=True):
            if path == cpuset_path:
                _create_seeded(mount, parts, created)
            else:
                _makedirs(path, parts, created)
    except OSError:
        remove_now(created)
        raise
    return created


def _makedirs(mount: str, parts: list[str], created: list[str]) -> None:
    path = os.path.join(mount, *parts)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    except FileNotFoundError:
        if len(parts) == 1:
            raise
        _makedirs(mount, parts[:-1], created)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return
    created.append(path)


def _create_seeded(mount: Path, parts: list[str], created: list[str]) -> None:
    current = mount
    for part in parts:
        parent, current = current, current / part
        try:
            os.mkdir(current, 0o755)
            created.append(str(current))
        except FileExistsError:
            pass
        if (parent / "cpuset.cpus").exists():
            for name in ("cpuset.cpus", "cpuset.mems"):
                if _unset(current / name):
                    (current / name).write_text((parent / name).read_text())


def _unset(cpuset_file: Path) -> bool:
    try:
        return not cpuset_file.read_text().strip()
    except FileNotFoundError:
        return True


def move(pid: int, cgroups_path: str, lay: Layout | None = None) -> None:
    """Move ``pid`` into the (existing) cgroup in every hierarchy."""
    data = str(pid).encode()
    for directory in _dirs(clean_path(cgroups_path), lay):
        fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _dirs(cgroups_path: str, lay: Layout | None) -> list[str]:
    """cgroup_dirs as strings, joined without Path objects."""
    relative = cgroups_path.strip("/")
    return [os.path.join(m, relative) for m in (lay or layout()).mount_paths]


def place(pid: int, cgroups_path: str, lay: Layout | None = None) -> None:
    """Create ``cgroups_path`` where missing and move ``pid`` into it."""
    create(cgroups_path, lay)
    move(pid, cgroups_path, lay)


def remove(cgroups_path: str, lay: Layout | None = None) -> list[str]:
    """rmdir the cgroup (and its now-empty children) in every hierarchy; returns the paths it could not remove."""
    if not cgroups_path.strip("/"):
        return []
    return [str(d) for d in cgroup_dirs(cgroups_path, lay) if not _rmdir_tree(d)]


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


def remove_now(directories: list[str]) -> list[str]:
    """rmdir deepest first; return those still busy (a process not yet reaped, or a child cgroup)."""
    busy = []
    for directory in sorted(directories, key=len, reverse=True):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
            busy.append(directory)
    return busy


async def remove_created(directories: list[str], timeout: float = 5.0) -> None:
    """Remove what `create` made; a parent shared with another pod (it has child cgroups) is left in place.

    A directory that is busy only with processes is waited for; CgroupBusy after `timeout`.
    """
    deadline = time.monotonic() + timeout
    busy = remove_now(directories)
    while busy:
        ours = [d for d in busy if _has_no_subdirs(d)]
        if not ours or time.monotonic() > deadline:
            if ours:
                raise CgroupBusy(f"cgroups still busy after {timeout:g}s: {ours}")
            return
        await asyncio.sleep(0.01)
        busy = remove_now(busy)


def _has_no_subdirs(directory: str) -> bool:
    try:
        return not any(e.is_dir() for e in os.scandir(directory))
    except FileNotFoundError:
        return False


def find(names: set[str], lay: Layout | None = None) -> list[str]:
    """Every directory in every hierarchy whose name is in `names`, wherever its parent is (orphans have no record
    left to say which parent kubelet gave them); a match is not descended into."""
    found = []
    for mount in hierarchies(lay):
        for directory, subdirs, _ in os.walk(mount):
            found += [os.path.join(directory, d) for d in subdirs if d in names]
            subdirs[:] = [d for d in subdirs if d not in names]
    return found


def procs(directory: str | Path) -> list[int]:
    try:
        return [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def _read(path: str) -> bytes:
    """A small kernel file's content, with os calls only: kill_all reads a dozen of them per look, from worker
    threads, and Path.read_text's Python (a text wrapper per file) was GIL time the event loop waited for."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def kill(directories: list[str]) -> None:
    """SIGKILL every process in these cgroup directories, once (`remove_created` then waits for them to go)."""
    for directory in directories:
        _kill(procs(directory))


def _kill(pids: set[int] | list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _populated(directory: str) -> bool:
    try:
        return b"populated 1" in _read(os.path.join(directory, "cgroup.events"))
    except OSError:
        return False


def kill_all(cgroups_path: str, timeout: float = 1.0, lay: Layout | None = None) -> bool:
    """SIGKILL every process left in the cgroup and wait until it is empty; False on timeout.

    An exited container can leave background children behind in a shared pid namespace. The runtimes kill them
    too, but then poll the cgroup in 10 ms steps before they can remove it: emptying it first makes their
    delete quick. The wait starts with 1 ms steps and doubles them up to 10 ms: each look reads cgroup.procs in
    every hierarchy (a dozen on v1), and on a loaded host, where the killed take long to go, 1 ms looks of 100
    containers at once were GIL time taken from the event loop.
    """
    if not cgroups_path.strip("/"):
        return True
    dirs = [d for d in _dirs(cgroups_path, lay) if os.path.isdir(d)]
    deadline = time.monotonic() + timeout
    step = 0.001
    while True:
        pids = {pid for d in dirs for pid in procs(d)}
        if not pids and not any(_populated(d) for d in dirs):
            return True
        _kill(pids)
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
        step = min(step * 2, 0.010)
