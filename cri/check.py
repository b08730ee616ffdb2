"""`pycri check`: what the host has, what it lacks, and how to fix it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cri.config import Config
from cri.oci import criu
from hostos import cgroups
from hostos.cgroups.driver import driver

CAP_SYS_RESOURCE = 24
APT_FIX = "apt-get install -y {}"


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"version unknown ({e})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def _binary(name: str, path: str, package: str, required: bool = True) -> Finding:
    found = shutil.which(path)
    if found:
        return Finding(name, True, f"{found}: {_version(found)}", required=required)
    return Finding(name, False, f"{path} not found", APT_FIX.format(package), required)


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def findings(config: Config) -> list[Finding]:
    out: list[Finding] = []
    for handler, spec in config.runtime.handlers.items():
        required = handler == config.runtime.default_runtime
        out.append(_binary(f"runtime handler {handler}", spec.path, Path(spec.path).name, required))
    out.append(_binary("conmon", config.runtime.conmon, "conmon"))
    out.append(_binary("iptables", "iptables", "iptables"))
    out.append(_binary("catatonit (pod PID namespace holder)", "catatonit", "catatonit"))
    out.append(_binary("unshare (namespace pinning)", "unshare", "util-linux"))
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        dirs = [d for d in config.network.cni_plugin_dirs if (d / plugin).is_file()]
        out.append(Finding(f"CNI plugin {plugin}", bool(dirs),
                           str(dirs[0] / plugin) if dirs
                           else f"not in {', '.join(map(str, config.network.cni_plugin_dirs))}",
                           APT_FIX.format("containernetworking-plugins")))
    confs = sorted(p for ext in ("*.conf", "*.conflist", "*.json") for p in config.network.cni_conf_dir.glob(ext)) \
        if config.network.cni_conf_dir.is_dir() else []
    out.append(Finding("CNI network configuration", bool(confs),
                       ", ".join(p.name for p in confs) or f"none in {config.network.cni_conf_dir}",
                       "make install-cni-default (installs a bridge network, 10.88.0.0/16)"))
    overlay = "overlay" in Path("/proc/filesystems").read_text()
    out.append(Finding("overlayfs", overlay, "available" if overlay else "not in /proc/filesystems",
                       "modprobe overlay"))
    lay = cgroups.layout()
    kind = "v2" if lay.is_v2 else ("hybrid (v1 controllers, v2 at %s)" % lay.unified if lay.unified else "v1")
    out.append(Finding("cgroups", True, kind, required=False))
    if "crun" in config.runtime.handlers:
        problem = cgroups.crun_hybrid_problem(lay)
        detail, _, fix = (problem or "crun can run here").partition("; mount them under v1: ")
        out.append(Finding("crun and cgroups", problem is None, detail, fix, required=False))
    out.append(_cgroup_manager(config))
    has_resource = bool(effective_capabilities() & (1 << CAP_SYS_RESOURCE))
    out.append(Finding("CAP_SYS_RESOURCE", has_resource,
                       "present" if has_resource else
                       "missing: negative oom_score_adj is clamped to the daemon's own score",
                       "none needed; run pycri with CAP_SYS_RESOURCE to honour negative scores", required=False))
    out.append(_idmapped_rootfs(config))
    criu_why = asyncio.run(criu.criu_problem())
    out.append(Finding("CRIU (CheckpointContainer, restore)", criu_why is None, criu_why or "`criu check` passes",
                       "a CRIU release that supports this kernel", required=False))
    return out


def _cgroup_manager(config: Config) -> Finding:
    """The manager `auto` resolves to, and for systemd whether its bus answers (runc/crun need it too)."""
    wanted = config.runtime.cgroup_manager
    try:
        manager = driver(wanted)
        asyncio.run(manager.check())
    except OSError as e:
        return Finding(f"cgroup manager ({wanted})", False, e.strerror or str(e),
                       'set [runtime] cgroup_manager = "cgroupfs", or start systemd and dbus')
    return Finding(f"cgroup manager ({wanted})", True, manager.name)


def _idmapped_rootfs(config: Config) -> Finding:
    """Tried for real on the filesystem of the root (a scratch dir there), as the daemon does."""
    from storage import overlay

    base = config.root if config.root.is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=".check-idmap-", dir=base) as scratch:
        problem = overlay.idmap_problem(Path(scratch) / "probe")
    return Finding("idmapped rootfs (user-namespaced pods)", problem is None,
                   problem or "overlay on idmapped layers works",
                   "Linux 5.19+ and a root filesystem that supports idmapped mounts (ext4, xfs, btrfs)", required=False)


def report(config: Config) -> int:
    failed = False
    for f in findings(config):
        mark = "ok  " if f.ok else ("FAIL" if f.required else "warn")
        print(f"[{mark}] {f.name}: {f.detail}")
        if not f.ok and f.fix:
            print(f"       fix: {f.fix}")
        failed |= f.required and not f.ok
    return 1 if failed else 0
