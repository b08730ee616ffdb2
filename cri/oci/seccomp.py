"""The RuntimeDefault seccomp profile, and conversion of Localhost profiles to the OCI form.

Form chosen: a denylist (default action ALLOW, listed syscalls fail with EPERM). Why: the dangerous surface a
container must not reach is a short, reviewable list tied to capabilities, while an allowlist of ~350 names has to
track every new syscall (clone3, openat2, futex_waitv ...) or break programs that use them. Each denied syscall
is dropped from the list when the container holds the capability that legitimately grants it, as established
runtimes do, so granting CAP_SYS_ADMIN really allows mount.
"""

from __future__ import annotations

import platform
from typing import Any

EPERM = 1
ENOSYS = 38

_NATIVE_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
}

# syscall names -> the capability that makes them legitimate (None: denied for everyone).
_DENIED: dict[str | None, tuple[str, ...]] = {
    None: (
        "keyctl", "add_key", "request_key",  # the kernel keyring is not namespaced
        "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
    ),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module", "create_module", "query_module",
                       "get_kernel_syms"),
    "CAP_SYS_BOOT": ("reboot", "kexec_load", "kexec_file_load"),
    "CAP_SYS_ADMIN": (
        "mount", "umount", "umount2", "pivot_root", "swapon", "swapoff", "unshare", "setns",
        "quotactl", "quotactl_fd", "lookup_dcookie", "fsopen", "fsconfig", "fsmount", "fspick", "open_tree",
        "move_mount", "mount_setattr", "bpf", "perf_event_open", "fanotify_init", "name_to_handle_at", "syslog",
    ),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_TIME": ("settimeofday", "clock_settime", "clock_adjtime", "stime"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_PTRACE": ("userfaultfd", "process_vm_readv", "process_vm_writev", "kcmp"),
}

_CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def architectures(machine: str | None = None) -> list[str]:
    return list(_NATIVE_ARCHES.get(machine or platform.machine(), []))


def _kernel_before(release: str, major: int, minor: int) -> bool:
    try:
        parts = release.split(".")
        return (int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)) < (major, minor)
    except (IndexError, ValueError):
        return False


def default_profile(capabilities: frozenset[str] | set[str] = frozenset(), kernel_release: str | None = None,
                    machine: str | None = None) -> dict[str, Any]:
    """The RuntimeDefault profile for a container holding ``capabilities`` (names like "CAP_SYS_ADMIN")."""
    release = kernel_release if kernel_release is not None else platform.release()
    denied: list[str] = []
    for cap, names in _DENIED.items():
        if cap is None or cap not in capabilities:
            denied.extend(names)
    # ptrace could bypass seccomp before 4.8; on newer kernels it is as safe as the capabilities around it.
    if _kernel_before(release, 4, 8) and "CAP_SYS_PTRACE" not in capabilities:
        denied.append("ptrace")
    syscalls: list[dict[str, Any]] = [{"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}]
    if "CAP_SYS_ADMIN" not in capabilities:
        # clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
        for flag in _CLONE_NAMESPACE_FLAGS:
            syscalls.append({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            })
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures(machine), "syscalls": syscalls}


class SeccompProfileError(Exception):
    """A Localhost profile is not valid JSON of the Docker/OCI seccomp form."""


_ARCH_ALIASES = {"SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_AARCH64": "aarch64"}


def _applies(filter_: dict[str, Any] | None, capabilities: frozenset[str] | set[str], machine: str) -> bool:
    if not filter_:
        return True
    caps = filter_.get("caps") or []
    arches = filter_.get("arches") or []
    if caps and not all(c in capabilities for c in caps):
        return False
    if arches and machine not in arches and not any(_ARCH_ALIASES.get(a) == machine for a in arches):
        return False
    return True


def to_oci(profile: object, capabilities: frozenset[str] | set[str] = frozenset(),
           machine: str | None = None) -> dict[str, Any]:
    """Convert a Localhost profile (Docker's format, a superset of OCI's) into the OCI ``linux.seccomp`` object."""
    machine = machine or platform.machine()
    if not isinstance(profile, dict) or not isinstance(profile.get("defaultAction"), str):
        raise SeccompProfileError("seccomp profile must be a JSON object with a defaultAction")
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if isinstance(profile.get("defaultErrnoRet"), int):
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    arches = profile.get("architectures")
    if not arches and isinstance(profile.get("archMap"), list):
        arches = []
        for entry in profile["archMap"]:
            if _ARCH_ALIASES.get(entry.get("architecture")) == machine:
                arches = [entry["architecture"], *entry.get("subArchitectures", [])]
    out["architectures"] = list(arches) if arches else architectures(machine)
    if isinstance(profile.get("flags"), list):
        out["flags"] = list(profile["flags"])
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict) or not isinstance(rule.get("action"), str):
            raise SeccompProfileError(f"seccomp rule without an action: {rule!r}")
        if not _applies(rule.get("includes"), capabilities, machine):
            continue
        excludes = rule.get("excludes")
        if excludes and (excludes.get("caps") or excludes.get("arches")) and _applies(excludes, capabilities, machine):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) for n in names):
            raise SeccompProfileError(f"seccomp rule without syscall names: {rule!r}")
        converted: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                converted[key] = rule[key]
        syscalls.append(converted)
    out["syscalls"] = syscalls
    return out
