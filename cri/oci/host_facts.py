"""Facts about this host and this daemon that a container spec must respect: capabilities, the oom_score_adj
floor, AppArmor, device nodes (read once, cached)."""

from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path

from cri.oci import apparmor, selinux
from cri.oci.spec_inputs import ALL_CAPABILITIES, DeviceRequest

CAP_SYS_RESOURCE_BIT = 24


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def capabilities_from_mask(mask: int) -> frozenset[str]:
    return frozenset(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


@lru_cache(maxsize=1)
def daemon_capabilities() -> frozenset[str]:
    """What the daemon itself holds (bounding and effective): a container can never get more."""
    fields = _status_fields()
    return capabilities_from_mask(int(fields["CapBnd"], 16) & int(fields["CapEff"], 16))


@lru_cache(maxsize=1)
def oom_score_adj_floor() -> int | None:
    """Without CAP_SYS_RESOURCE nobody can go below the daemon's own score, so clamp to it; else no floor."""
    if "CAP_SYS_RESOURCE" in daemon_capabilities():
        return None
    try:
        return int(Path("/proc/self/oom_score_adj").read_text().strip())
    except (OSError, ValueError):
        return 0


@lru_cache(maxsize=1)
def apparmor_enabled() -> bool:
    return apparmor.enabled()


@lru_cache(maxsize=1)
def selinux_enabled() -> bool:
    return selinux.enabled()


def device_request(host_path: str, container_path: str, permissions: str = "rwm") -> DeviceRequest | None:
    """A device node as the spec wants it; None when the host path is not a device."""
    try:
        st = os.stat(host_path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceRequest(container_path=container_path, host_path=host_path, permissions=permissions, type=kind,
                         major=os.major(st.st_rdev), minor=os.minor(st.st_rdev), file_mode=stat.S_IMODE(st.st_mode),
                         uid=st.st_uid, gid=st.st_gid)


def host_devices() -> list[DeviceRequest]:
    """Every device under /dev, for privileged containers (pts, shm and mqueue are mounted separately)."""
    devices = []
    for directory, subdirs, files in os.walk("/dev"):
        subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in ("/dev/pts", "/dev/shm", "/dev/mqueue")]
        for name in files:
            path = os.path.join(directory, name)
            if path == "/dev/console":
                continue
            request = device_request(path, path)
            if request is not None:
                devices.append(request)
    return devices
