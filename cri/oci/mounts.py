"""Mount capabilities: whether a host path's mount can carry the propagation a container mount asks for (pure,
over parsed mountinfo), and whether the kernel and an OCI runtime do recursive read-only and idmapped mounts."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from typing import Any, Callable

from hostos import mountinfo


def propagation_problem(host_path: str, propagation: str, mounts: list[mountinfo.Mount]) -> str | None:
    """Why ``host_path`` cannot be mounted with ``propagation`` (rshared needs a shared host mount, rslave a shared
    or slave one), or None when it can."""
    if propagation == "private":
        return None
    holder = mountinfo.mount_of(host_path, mounts)
    point, tags = (holder.mount_point, holder.propagation) if holder else ("/", set())
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
    table = mountinfo.read()
    return [problem for path, mode in wanted if (problem := propagation_problem(path, mode, table))]


# --- what the kernel and an OCI runtime can do with mounts ---------------------------------------------------

MOUNT_SETATTR_KERNEL = (5, 12)   # mount_setattr(2): recursive read-only, idmapped mounts
IDMAPPED_LAYERS_KERNEL = (5, 19)  # overlayfs over idmapped lower layers
# crun has no `features` command before 1.9; this is the oldest release whose "rro" we have seen work.
CRUN_RRO_VERSION = (1, 8)
CRUN_IDMAP_VERSION = (1, 8, 1)  # the first crun that makes idmapped mounts from a mount's uid/gidMappings
PROBE_TIMEOUT = 5.0


def kernel_at_least(release: str, wanted: tuple[int, int]) -> bool:
    """Whether a `uname -r` release ("6.18.44-fc") is at least major.minor."""
    parts = release.split("-")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= wanted
    except (IndexError, ValueError):
        return False


def _crun_version(version_text: str) -> tuple[int, ...] | None:
    """(major, minor, patch) from `crun --version`; None for another runtime or an unreadable answer."""
    first = version_text.splitlines()[0].split() if version_text.strip() else []
    if len(first) != 3 or first[:2] != ["crun", "version"]:
        return None
    try:
        return tuple(int(x) for x in first[2].split("."))
    except ValueError:
        return None


def runtime_supports_rro(features_text: str | None, version_text: str) -> bool:
    """From `<runtime> features` (the OCI features document) when the runtime has it, else from its version."""
    if features_text:
        try:
            options = json.loads(features_text).get("mountOptions") or []
        except (ValueError, AttributeError):
            return False
        return "rro" in options
    version = _crun_version(version_text)
    return version is not None and version >= CRUN_RRO_VERSION


def runtime_supports_idmap(features_text: str | None, version_text: str) -> bool:
    """Idmapped mounts: the features document's linux.mountExtensions.idmap.enabled (runc 1.2+, crun 1.9+), else
    crun's version. runc 1.1 has a features document without it: it ignores a mount's mappings silently."""
    if features_text:
        try:
            idmap = ((json.loads(features_text).get("linux") or {}).get("mountExtensions") or {}).get("idmap") or {}
        except (ValueError, AttributeError):
            return False
        return idmap.get("enabled") is True
    version = _crun_version(version_text)
    return version is not None and version >= CRUN_IDMAP_VERSION


async def _output(argv: list[str]) -> str | None:
    """stdout of a short probe, or None when it fails or hangs (the caller then assumes no support)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def _probe(runtime_path: str, judge: Callable[[str | None, str], bool]) -> bool:
    """Both need mount_setattr(2); then the runtime's features document, or its version when it has none."""
    if not kernel_at_least(os.uname().release, MOUNT_SETATTR_KERNEL):
        return False
    features = await _output([runtime_path, "features"])
    version = "" if features else (await _output([runtime_path, "--version"]) or "")
    return judge(features, version)


async def probe_rro(runtime_path: str) -> bool:
    """Whether containers of this runtime binary get recursive read-only mounts on this kernel."""
    return await _probe(runtime_path, runtime_supports_rro)


async def probe_idmap(runtime_path: str) -> bool:
    """Whether containers of this runtime binary get idmapped bind mounts on this kernel."""
    return await _probe(runtime_path, runtime_supports_idmap)


# (probe, path, inode, mtime) -> answer: Status asks every few seconds, CreateContainer for each rro or idmapped
# mount; a binary replaced in place (a package upgrade) is probed again.
_answers: dict[tuple[Any, ...], bool] = {}


async def _once(probe: Callable[[str], Awaitable[bool]], runtime_path: str) -> bool:
    try:
        st = os.stat(runtime_path)
    except OSError:
        return False
    key = (probe.__name__, runtime_path, st.st_ino, st.st_mtime_ns)
    if key not in _answers:
        _answers[key] = await probe(runtime_path)
    return _answers[key]


async def supports_rro(runtime_path: str) -> bool:
    """``probe_rro``, run once per runtime binary."""
    return await _once(probe_rro, runtime_path)


async def supports_idmap(runtime_path: str) -> bool:
    """``probe_idmap``, run once per runtime binary."""
    return await _once(probe_idmap, runtime_path)
