"""The cgroup manager a daemon runs with: plain cgroupfs (mkdir and write our own directories), or systemd.

Both speak cgroup paths to their callers, so stats, OOM counts, kills and removal read the same files either
way; they differ in how a cgroup comes to exist, what the OCI runtime is told, and what kubelet is told.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Literal

from hostos.cgroups import systemd, tree
from hostos.cgroups.layout import cgroup_dirs, clean_path, layout
from hostos.cgroups.limits import Limits, planned_writes

Name = Literal["cgroupfs", "systemd"]


class CgroupfsDriver:
    name: Name = "cgroupfs"
    default_parent = "/pycri"
    runtime_args: tuple[str, ...] = ()   # for runc/crun before the command
    conmon_args: tuple[str, ...] = ()
    spec_annotations: tuple[tuple[str, str], ...] = ()  # for the runtime, in each container's spec

    def parent(self, requested: str) -> str:
        """The cgroup path of the pod-level parent kubelet asked for (ValueError when it cannot be one)."""
        return clean_path(requested or self.default_parent)

    def child(self, parent: str, name: str) -> str:
        """The cgroup path of a cgroup of ours named `name` below `parent` (a path from `parent()`)."""
        return f"{parent.rstrip('/')}/{name}"

    def spec_path(self, path: str) -> str:
        """What the OCI spec's linux.cgroupsPath says for a cgroup made by `child`."""
        return path

    async def place(self, pid: int, path: str, description: str = "") -> None:
        """Make the cgroup (where missing) and move `pid` into it."""
        await asyncio.to_thread(tree.place, pid, path)

    async def release(self, path: str) -> None:
        """Nothing: a cgroupfs cgroup is removed with rmdir by whoever made it."""

    async def keep(self, path: str, limits: Limits) -> None:
        """Nothing: under cgroupfs the limits written into the files (limits.apply) stay as they are."""

    async def check(self) -> None:
        """Raise OSError when this manager cannot work here (called once at start)."""


class SystemdDriver(CgroupfsDriver):
    """Slices for parents (kubelet's systemd driver sends names like kubepods-burstable-pod<uid>.slice), a
    transient scope for each cgroup of ours, runc/crun told `--systemd-cgroup` with `slice:pycri:<id>`."""

    name: Name = "systemd"
    default_parent = "pycri.slice"
    runtime_args = ("--systemd-cgroup",)
    conmon_args = ("--systemd-cgroup",)
    # crun on cgroup v2 would run the container in a `container` child of its scope; runc runs it in the scope,
    # where pycri's kills (cgroup.procs), stats and OOM counts look. An empty subgroup keeps crun there too.
    spec_annotations = (("run.oci.systemd.subgroup", ""),)

    def __init__(self, client: systemd.Systemd | None = None) -> None:
        self.client = client or systemd.Systemd()

    def parent(self, requested: str) -> str:
        """A slice name, or the slice's own cgroup path as critest sends it ("/test.slice") and as
        "/kubepods.slice/kubepods-besteffort.slice" names the same slice: systemd decides where a slice lives."""
        name = requested or self.default_parent
        if "/" not in name:
            return systemd.expand_slice(name)
        path = systemd.expand_slice(name.rstrip("/").rpartition("/")[2])
        if path != "/" + name.strip("/"):
            raise ValueError(f"{name!r} is not where systemd puts its slice ({path})")
        return path

    def child(self, parent: str, name: str) -> str:
        return f"{parent.rstrip('/')}/{name}.scope"

    def spec_path(self, path: str) -> str:
        slice_name, unit = systemd.scope_name(path)
        prefix, _, name = unit[:-len(".scope")].partition("-")
        return f"{slice_name}:{prefix}:{name}"

    async def place(self, pid: int, path: str, description: str = "") -> None:
        slice_name, unit = systemd.scope_name(path)
        await self.client.start_scope(unit, slice_name, [pid], description or f"pycri {unit}")

    async def release(self, path: str) -> None:
        """Stop the scope, killing what is still in it first: systemd's stop sends SIGTERM and waits out
        TimeoutStopSec (90 s by default) for what ignores it, as a PID namespace's init does before it has exec'd
        (a half-started infra): SIGTERM from outside reaches it only through a handler it has not set yet."""
        await asyncio.to_thread(tree.kill, [str(d) for d in cgroup_dirs(path, layout())])
        await self.client.stop_unit(systemd.scope_name(path)[1])

    async def keep(self, path: str, limits: Limits) -> None:
        """Tell systemd the limits just written into the slice at `path` (a pod's parent): it re-applies a unit's
        own settings over its cgroup files at daemon-reload, which would undo a pod resize it was not told of."""
        properties = systemd.unit_properties(planned_writes(limits, layout()))
        if properties:
            await self.client.set_properties(path.rstrip("/").rpartition("/")[2], properties)

    async def check(self) -> None:
        await self.client.connect()


def resolve(wanted: str) -> Name:
    """"auto" is systemd when it is PID 1, cgroupfs otherwise; systemd asked for where it does not run is an error."""
    if wanted == "auto":
        return "systemd" if systemd.running() else "cgroupfs"
    if wanted == "systemd" and not systemd.running():
        raise systemd.SystemdError(
            f"cgroup_manager = \"systemd\" but systemd is not PID 1 here ({systemd.SYSTEMD_RUN_DIR} does not exist); "
            "set cgroup_manager = \"cgroupfs\" or \"auto\"")
    if wanted not in ("cgroupfs", "systemd"):
        raise ValueError(f"unknown cgroup manager {wanted!r}")
    return wanted  # type: ignore[return-value]


def driver(wanted: str) -> CgroupfsDriver:
    """The driver for a configured cgroup_manager ("auto" resolved), one per process for each name."""
    return _driver(resolve(wanted))


@functools.cache
def _driver(name: Name) -> CgroupfsDriver:
    return SystemdDriver() if name == "systemd" else CgroupfsDriver()
