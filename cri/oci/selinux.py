"""SELinux labels for containers, passed through: the label a container's process runs with (pure, plus the
host check).

Only what CRI's selinux_options name is applied, with the usual container defaults for the parts left unset;
pycri allocates no MCS categories, relabels no volumes and labels no mounts (see docs/conformance.md).
"""

from __future__ import annotations

from pathlib import Path

SELINUXFS = Path("/sys/fs/selinux")
DEFAULTS = {"user": "system_u", "role": "system_r", "type": "container_t", "level": "s0"}


def enabled(selinuxfs: Path = SELINUXFS) -> bool:
    """SELinux is on when its filesystem is mounted (it has an enforce file then)."""
    return (selinuxfs / "enforce").exists()


def process_label(options: dict[str, str], selinux_on: bool) -> str:
    """"user:role:type:level" for process.selinuxLabel; "" when none was asked for or SELinux is off (the
    options are then ignored, as containerd and CRI-O do)."""
    if not selinux_on or not any(options.get(k) for k in DEFAULTS):
        return ""
    return ":".join(options.get(k) or default for k, default in DEFAULTS.items())
