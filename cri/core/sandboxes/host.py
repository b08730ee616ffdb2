"""Host-side pieces of a sandbox: the /dev/shm tmpfs, rootfs binds for user-namespaced pods, the infra process;
and PodHost, the one seam through which the sandbox manager acts on the host (namespaces, mounts, cgroups, the
infra process)."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Awaitable, Callable

from cri.errors import Internal
from hostos import cgroups, libc, mountinfo, spawn
from hostos.libc import MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_REMOUNT
from netplugins import namespace_alive, pin_namespaces, unpin_namespace

from .infrawatch import InfraWatch

SHM_SIZE = 64 * 1024 * 1024
_DEAD_STATES = ("Z", "X", "x")  # /proc/<pid>/stat states of a process that holds nothing any more


# --- /dev/shm ------------------------------------------------------------------------------------------

def mount_shm(target: Path, size: int = SHM_SIZE) -> None:
    target.mkdir(mode=0o755, exist_ok=True)
    data = f"mode=1777,size={size}"
    err = libc.mount("shm", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, data)
    if err:
        raise Internal(f"mounting the pod's /dev/shm tmpfs on {target}: {os.strerror(err)}")


def unmount(target: Path | str) -> None:
    """Unmount (lazily) every mount stacked on `target`; not mounted is fine."""
    while not (err := libc.umount2(target, MNT_DETACH)):
        pass
    if err not in (errno.EINVAL, errno.ENOENT):
        raise Internal(f"unmounting {target}: {os.strerror(err)}")


# --- user namespaces -------------------------------------------------------------------------------------

def user_namespaces_problem() -> str | None:
    """Why this host cannot give a pod a user namespace of its own, or None when it can."""
    if not os.path.exists("/proc/self/ns/user"):
        return "the kernel has no user namespaces (CONFIG_USER_NS)"
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 0
    if limit <= 0:
        return "user namespaces are disabled on this host (sysctl user.max_user_namespaces is 0)"
    if shutil.which("unshare", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        return "util-linux `unshare` is not installed"
    return None


def exposed_rootfs(sandbox_dir: Path | str, container_id: str) -> Path:
    return Path(sandbox_dir) / "rootfs" / container_id


def expose_rootfs(sandbox_dir: Path | str, container_id: str, source: Path, root_ids: tuple[int, int],
                  volumes: tuple[Path, ...] = ()) -> tuple[Path, tuple[Path, ...]]:
    """Bind a container's rootfs (and its image volumes, at rootfs/<id>.volumes/<n>) where the pod's user
    namespace root can reach them, and nobody else; returns where they are.

    The runtime mounts the rootfs from inside the pod's user namespace, where the daemon's 0700 storage root
    is closed. The bind sits in the sandbox dir (0711) below a directory only the pod's root (`root_ids`, its
    host uid and gid) may enter; nosuid and nodev, as setuid files owned by host root mean nothing in there.
    """
    parent = Path(sandbox_dir) / "rootfs"
    parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(parent, *root_ids)
    target = exposed_rootfs(sandbox_dir, container_id)
    targets = [target, *(parent / f"{container_id}.volumes" / str(n) for n in range(len(volumes)))]
    try:
        for where, what in zip(targets, [source, *volumes], strict=True):
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            for flags, step in ((MS_BIND, "binding"), (MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, "remounting")):
                err = libc.mount(what if flags == MS_BIND else None, where, None, flags)
                if err:
                    raise Internal(f"{step} {what} of container {container_id} at {where}: {os.strerror(err)}")
    except BaseException:
        unexpose_rootfs(sandbox_dir, container_id)
        raise
    return target, tuple(targets[1:])


def unexpose_rootfs(sandbox_dir: Path | str, container_id: str) -> None:
    """Undo expose_rootfs; nothing to do if it was never made."""
    target = exposed_rootfs(sandbox_dir, container_id)
    volumes = target.with_name(f"{container_id}.volumes")
    for where in [target, *(sorted(volumes.iterdir()) if volumes.is_dir() else [])]:
        unmount(where)
        try:
            where.rmdir()
        except FileNotFoundError:
            pass
    try:
        volumes.rmdir()
    except FileNotFoundError:
        pass


# --- the infra process ----------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) from /proc/<pid>/stat; None when the pid names no process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (0 when the process is gone): with the pid it names one process for good."""
    stat = _stat(pid)
    return stat[1] if stat else 0


def infra_running(pid: int, start_time: int) -> bool:
    """Whether the infra still runs: same pid and start time, and not a zombie waiting for a reaper.

    A killed infra whose parent died first is re-parented to PID 1, which on some hosts never reaps: it stays
    a zombie with its start time intact, yet holds nothing.
    """
    stat = _stat(pid) if pid else None
    return stat is not None and stat[1] == start_time and stat[0] not in _DEAD_STATES


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# The infra parents this daemon started, by pid: reaped through their Popen (which also holds the reaping lock
# subprocess's own clean-up takes), until their stop.
_started: dict[int, subprocess.Popen[bytes]] = {}

INFRA_LOG = "infra.log"  # in the sandbox dir: the infra's stdout and stderr


async def start_infra(catatonit: str, namespaces: dict[str, str], cgroup: str, workdir: str,
                      place: Callable[[int], Awaitable[None]], timeout: float = 5.0) -> tuple[int, int, int]:
    """Start catatonit as pid 1 of a new PID namespace, inside the pod's other namespaces and cgroup.

    Returns (infra pid, its start time, pid of the `unshare` parent that holds it). Spawned in a thread
    (hostos.spawn; os.posix_spawnp held the GIL, so the event loop, for the whole vfork and exec) and kept off
    the asyncio child watcher: the infra lives as long as the pod, not as long as a call.
    """
    # --wd puts the sandbox dir on the command line, so a sweep for the pod's processes finds the infra too.
    argv = ["unshare", f"--wd={workdir}", "--pid", "--fork", "--kill-child=SIGKILL", catatonit, "-P"]
    if namespaces:
        argv = ["nsenter", *(f"--{kind}={path}" for kind, path in sorted(namespaces.items()))] + argv
    # The infra and its parents write to a file of the pod's, not to the daemon's stderr: util-linux 2.38's
    # `unshare --fork` complains at every pod stop ("sigprocmask unblock failed"), and a journal stream the
    # infra held would outlive the daemon that opened it. The file says why a start failed.
    log_path = os.path.join(workdir, INFRA_LOG)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        proc = await spawn.popen(argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd)
    finally:
        os.close(log_fd)
    parent = proc.pid
    _started[parent] = proc
    try:
        await place(parent)  # into `cgroup`: moved there (cgroupfs), or a new systemd scope made around it
        deadline = time.monotonic() + timeout
        while True:
            kids = _children(parent)
            if kids and _comm(kids[0]) == "catatonit":
                break
            if proc.poll() is not None:
                raise Internal(f"infra process {' '.join(argv)} exited at start{_said(log_path)}")
            if time.monotonic() > deadline:
                raise Internal(f"infra process did not start within {timeout:g}s")
            await asyncio.sleep(0.001)
        infra = kids[0]
        await asyncio.to_thread(cgroups.move, infra, cgroup)  # it may have forked before its parent was moved
        return infra, process_start_time(infra), parent
    except BaseException:
        await stop_infra(0, 0, parent)
        raise


def _said(log_path: str, limit: int = 2000) -> str:
    """What the infra's start wrote, for its error."""
    try:
        with open(log_path, "rb") as f:
            text = f.read(limit).decode(errors="replace").strip()
    except OSError:
        return ""
    return f": {text}" if text else ""


async def stop_infra(pid: int, start_time: int, parent: int, timeout: float = 5.0) -> None:
    """SIGKILL the infra (pid 1 of its namespace, so every process in it dies too) and wait for its parent.

    The parent (`unshare`) reaps the infra and exits; killing the parent first would orphan the infra onto
    the daemon (a subreaper) as a zombie. Idempotent: an infra that is gone or a zombie is stopped already,
    and a parent pid that now names a younger process (pid reuse after a restart) is not ours to wait for.
    """
    infra_live = infra_running(pid, start_time)
    parent_ours = bool(parent) and _is_infra_parent(parent, start_time)
    target = pid if infra_live else parent if parent_ours else 0
    if target:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while (infra_live and infra_running(pid, start_time)) or (parent_ours and not _reaped(parent)):
        if time.monotonic() > deadline:
            raise Internal(f"infra process {pid or parent} did not exit within {timeout:g}s of SIGKILL")
        await asyncio.sleep(0.002)


def _is_infra_parent(parent: int, infra_start_time: int) -> bool:
    """Whether `parent` still names the infra's `unshare`: it started no later than the infra did.

    Without the infra's start time (it failed to start) the parent is our fresh child and surely ours.
    """
    stat = _stat(parent)
    return stat is not None and (not infra_start_time or stat[1] <= infra_start_time)


def _reaped(pid: int) -> bool:
    """Reap `pid` if it is our exited child; True once it is gone."""
    proc = _started.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return False
        del _started[pid]
        return True
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return bool(finished)
    except ChildProcessError:  # not ours (started by an earlier daemon): its reaper may be a PID 1 that never reaps
        stat = _stat(pid)
        return stat is None or stat[0] in _DEAD_STATES


class PodHost:
    """Every host action the sandbox manager takes, in one place: the real ones here; tests of the manager without
    root pass a fake (tests/unit/test_sandbox_manager.py)."""

    def __init__(self) -> None:
        self._infra = InfraWatch(infra_running)

    def close(self) -> None:
        self._infra.close()

    def user_namespaces_problem(self) -> str | None:
        return user_namespaces_problem()

    async def pin_namespaces(self, directory: Path, kinds: list[str], hostname: str | None, sysctls: dict[str, str],
                             uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]],
                             userns: bool) -> None:
        await pin_namespaces(directory, kinds, hostname, sysctls, uid_map=uid_map, gid_map=gid_map, userns=userns)

    def unpin_namespace(self, path: Path | str) -> None:
        unpin_namespace(path)

    def namespace_alive(self, path: Path | str) -> bool:
        return namespace_alive(path)

    def mount_shm(self, target: Path) -> None:
        mount_shm(target)

    def unmount(self, target: Path | str) -> None:
        unmount(target)

    def mounts_below(self, directory: Path | str) -> list[str]:
        return mountinfo.mounts_below(directory)

    def create_cgroup(self, path: str) -> list[str]:
        """The pod cgroup in every hierarchy; returns the directories it made (what remove_cgroups takes)."""
        return cgroups.create(path)

    async def remove_cgroups(self, directories: list[str]) -> None:
        await cgroups.remove_created(directories)

    def cgroup_dirs(self, path: str) -> list[str]:
        return [str(d) for d in cgroups.cgroup_dirs(path)]

    def move_to_cgroup(self, pid: int, path: str) -> None:
        cgroups.move(pid, path)

    def find_cgroups(self, names: set[str]) -> list[str]:
        return cgroups.find(names)

    def kill_cgroups(self, directories: list[str]) -> None:
        cgroups.kill(directories)

    async def start_infra(self, catatonit: str, namespaces: dict[str, str], cgroup: str, workdir: str,
                          place: Callable[[int], Awaitable[None]]) -> tuple[int, int, int]:
        infra = await start_infra(catatonit, namespaces, cgroup, workdir, place)
        self._infra.running(infra[0], infra[1])  # its watch begins now, not at the first List
        return infra

    async def stop_infra(self, pid: int, start_time: int, parent: int) -> None:
        await stop_infra(pid, start_time, parent)
        self._infra.forget(pid, start_time)

    def infra_running(self, pid: int, start_time: int) -> bool:
        """From memory once the infra is watched (infrawatch.py): List and Status ask this of every ready pod."""
        return self._infra.running(pid, start_time)
