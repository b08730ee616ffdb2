"""OCI runtime-spec config.json from plain inputs (pure: no I/O, no protobuf).

The core gathers everything that needs the host or the image (user resolution, the seccomp profile file, the
daemon's own capabilities) into ``ContainerInputs``; this module only decides. Errors are ``SpecError`` with a
message for the user; the core maps them to InvalidArgument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cri.oci import seccomp
from cri.oci.users import ResolvedUser

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# CRI-O's default set: what a process needs to drop root privileges and own files, nothing that reaches the host.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_KILL",
)
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Device nodes every container may use (the devices cgroup denies the rest).
_DEFAULT_DEVICE_RULES = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts
)

PROPAGATION_OPTIONS = {"private": "rprivate", "rslave": "rslave", "rshared": "rshared"}


class SpecError(Exception):
    """The request cannot be turned into a valid spec; the message says which field and why."""


@dataclass(frozen=True)
class IDMap:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class MountRequest:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "private"  # private | rslave | rshared
    recursive_read_only: bool = False
    # An idmapped mount: files owned by container_id on the host path appear owned by host_id, which the pod's
    # user namespace maps back (kubelet sends the pod's own mapping, so host root's files are the pod root's).
    uid_mappings: tuple[IDMap, ...] = ()
    gid_mappings: tuple[IDMap, ...] = ()


@dataclass(frozen=True)
class DeviceRequest:
    container_path: str
    host_path: str
    permissions: str
    type: str  # "c" or "b", from stat of host_path
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    memory_limit: int = 0
    memory_swap_limit: int = 0
    oom_score_adj: int = 0
    hugepage_limits: tuple[tuple[str, int], ...] = ()
    unified: dict[str, str] = field(default_factory=dict)
    pids_limit: int = 0


@dataclass
class ContainerInputs:
    container_id: str
    rootfs: str
    # process
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    image_entrypoint: list[str] = field(default_factory=list)
    image_cmd: list[str] = field(default_factory=list)
    image_env: list[str] = field(default_factory=list)
    envs: list[tuple[str, str]] = field(default_factory=list)
    working_dir: str = ""
    image_working_dir: str = ""
    tty: bool = False
    stdin: bool = False
    user: ResolvedUser = field(default_factory=ResolvedUser)
    hostname: str = ""
    # storage and files from the sandbox
    readonly_rootfs: bool = False
    mounts: list[MountRequest] = field(default_factory=list)
    devices: list[DeviceRequest] = field(default_factory=list)
    host_devices: list[DeviceRequest] = field(default_factory=list)  # every host device, used when privileged
    hosts_path: str = ""
    resolv_path: str = ""
    hostname_path: str = ""
    shm_path: str = ""
    # namespaces: modes are "POD", "CONTAINER", "NODE", "TARGET"
    network_mode: str = "POD"
    pid_mode: str = "CONTAINER"
    ipc_mode: str = "POD"
    netns_path: str = ""
    ipcns_path: str = ""
    utsns_path: str = ""
    pod_pid: int = 0  # the sandbox's infra process, for a shared pid namespace
    target_pid: int = 0  # the target container's process, for pid TARGET
    cgroup_namespace: bool = False  # a private one (cgroup v2, unprivileged): /sys/fs/cgroup is its own cgroup
    userns_mode: str = "NODE"
    userns_path: str = ""
    uid_mappings: list[IDMap] = field(default_factory=list)
    gid_mappings: list[IDMap] = field(default_factory=list)
    # security
    privileged: bool = False
    add_capabilities: list[str] = field(default_factory=list)
    drop_capabilities: list[str] = field(default_factory=list)
    add_ambient_capabilities: list[str] = field(default_factory=list)
    host_capabilities: frozenset[str] = frozenset(ALL_CAPABILITIES)
    default_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privs: bool = False
    seccomp: str = "unconfined"  # unconfined | runtime/default | localhost
    seccomp_localhost_profile: dict[str, Any] | None = None
    apparmor_profile: str = ""  # process.apparmorProfile; "" leaves the runtime's own (none without AppArmor)
    selinux_label: str = ""  # process.selinuxLabel; "" when SELinux is off or nothing was asked
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    # resources and placement
    resources: Resources = field(default_factory=Resources)
    oom_score_adj_floor: int | None = None  # the daemon's own score when it cannot lower it
    swap_accounting: bool = False
    cgroups_path: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    kernel_release: str | None = None


def process_args(inputs: ContainerInputs) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint and the image Cmd; args replace the Cmd."""
    if inputs.command:
        argv = list(inputs.command) + list(inputs.args)
    else:
        argv = list(inputs.image_entrypoint) + (list(inputs.args) if inputs.args else list(inputs.image_cmd))
    if not argv:
        raise SpecError("no command specified: neither the container config nor the image gives one")
    return argv


def process_env(inputs: ContainerInputs) -> list[str]:
    """The image's variables, overridden by the config's, then PATH, HOSTNAME and HOME when nobody set them."""
    merged: dict[str, str] = {}
    for item in inputs.image_env:
        key, sep, value = item.partition("=")
        if key:
            merged[key] = value if sep else ""
    for key, value in inputs.envs:
        if not key:
            raise SpecError("environment variable with an empty name")
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH.partition("=")[2])
    if inputs.hostname:
        merged.setdefault("HOSTNAME", inputs.hostname)
    merged.setdefault("HOME", inputs.user.home or "/")
    return [f"{k}={v}" for k, v in merged.items()]


def _normalise_cap(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("CAP_") or name == "ALL" else "CAP_" + name


def capability_set(inputs: ContainerInputs) -> list[str]:
    """Default (or all when privileged) + add - drop, ALL honoured, clamped to what the daemon itself holds.

    Asking runc for a capability the daemon lacks fails the start (EPERM from capset), so every set is clamped.
    """
    if inputs.privileged:
        caps = set(ALL_CAPABILITIES)
    else:
        adds = [_normalise_cap(c) for c in inputs.add_capabilities]
        drops = [_normalise_cap(c) for c in inputs.drop_capabilities]
        for cap in adds + drops:
            if cap != "ALL" and cap not in ALL_CAPABILITIES:
                raise SpecError(f"unknown capability {cap!r}")
        caps = set() if "ALL" in drops else set(inputs.default_capabilities)
        if "ALL" in adds:
            caps |= set(ALL_CAPABILITIES)
        caps |= {c for c in adds if c != "ALL"}
        if "ALL" not in drops:
            caps -= set(drops)
    caps &= set(inputs.host_capabilities)
    return [c for c in ALL_CAPABILITIES if c in caps]


def _capabilities_object(inputs: ContainerInputs, caps: list[str]) -> dict[str, Any]:
    ambient = [c for c in (_normalise_cap(a) for a in inputs.add_ambient_capabilities) if c in caps]
    if inputs.user.uid == 0:
        effective = list(caps)
    else:
        # A non-root process loses its permitted set at exec; only ambient capabilities survive it.
        effective = ambient
    return {
        "bounding": list(caps),
        "effective": list(effective),
        "permitted": list(effective),
        "inheritable": list(ambient),
        "ambient": list(ambient),
    }


def _has_mount_at(inputs: ContainerInputs, path: str) -> bool:
    return any(m.container_path.rstrip("/") == path for m in inputs.mounts)


def _mounts(inputs: ContainerInputs) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev"] + ([] if inputs.privileged else ["ro"])
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime"] + ([] if inputs.privileged else ["ro"])},
    ]
    if inputs.shm_path and inputs.ipc_mode != "NODE":
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": inputs.shm_path,
                       "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]})
    elif inputs.ipc_mode == "NODE":
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                       "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]})
    else:
        mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    sandbox_files = (("/etc/hosts", inputs.hosts_path), ("/etc/resolv.conf", inputs.resolv_path),
                     ("/etc/hostname", inputs.hostname_path))
    for destination, source in sandbox_files:
        if source and not _has_mount_at(inputs, destination):
            options = ["rbind", "rprivate"] + (["ro"] if inputs.readonly_rootfs else [])
            mounts.append({"destination": destination, "type": "bind", "source": source, "options": options})
    for m in inputs.mounts:
        if not m.container_path.startswith("/"):
            raise SpecError(f"mount destination {m.container_path!r} is not absolute")
        if not m.host_path:
            raise SpecError(f"mount for {m.container_path!r} has no host path")
        if m.propagation not in PROPAGATION_OPTIONS:
            raise SpecError(f"unknown mount propagation {m.propagation!r}")
        options = ["rbind", PROPAGATION_OPTIONS[m.propagation], "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            _check_recursive_read_only(m)
            options.append("rro")  # the runtime applies MOUNT_ATTR_RDONLY to every submount (mount_setattr)
        mount: dict[str, Any] = {"destination": m.container_path, "type": "bind", "source": m.host_path,
                                 "options": options}
        if m.uid_mappings or m.gid_mappings:
            # "idmap" too: runtime-spec 1.1 asks for it, so that a runtime which does not know the fields fails
            # instead of ignoring them (crun applies the mappings either way).
            options.append("idmap")
            mount["uidMappings"] = _mount_id_mappings(m, inputs, "uid")
            mount["gidMappings"] = _mount_id_mappings(m, inputs, "gid")
        mounts.append(mount)
    # Later entries are mounted over earlier ones: a kubelet mount at /dev/shm or /etc/hosts wins.
    return mounts


def _check_recursive_read_only(m: MountRequest) -> None:
    """A recursive read-only mount must be read-only and private: a submount propagated in later would escape it."""
    if not m.readonly:
        raise SpecError(f"mount {m.container_path}: recursive read-only needs readonly to be set too")
    if m.propagation != "private":
        raise SpecError(f"mount {m.container_path}: recursive read-only needs private propagation, "
                        f"not {m.propagation}")


def _mount_id_mappings(m: MountRequest, inputs: ContainerInputs, kind: str) -> list[dict[str, Any]]:
    """An idmapped mount's mapping: only inside a pod user namespace (outside one, host ids need no mapping),
    one mapping (what kubelet sends), within the 32-bit id space."""
    if inputs.userns_mode != "POD":
        raise SpecError(f"mount {m.container_path} has uid/gid mappings, but the container has no user namespace of "
                        f"its pod: idmapped mounts are only for pods with userns_options mode POD")
    mappings = m.uid_mappings if kind == "uid" else m.gid_mappings
    if len(mappings) != 1:
        raise SpecError(f"mount {m.container_path} needs exactly one {kind} mapping, got {len(mappings)}")
    idmap = mappings[0]
    if idmap.size <= 0:
        raise SpecError(f"mount {m.container_path}: {kind} mapping has length {idmap.size}")
    if min(idmap.container_id, idmap.host_id) < 0 or max(idmap.container_id, idmap.host_id) + idmap.size > 1 << 32:
        raise SpecError(f"mount {m.container_path}: {kind} mapping {idmap.container_id}:{idmap.host_id}:{idmap.size} "
                        f"leaves the 32-bit id space")
    return [{"containerID": idmap.container_id, "hostID": idmap.host_id, "size": idmap.size}]


def rootfs_propagation(inputs: ContainerInputs) -> str | None:
    """The root mount must be shared for rshared mounts and at least a slave for rslave ones to propagate."""
    modes = {m.propagation for m in inputs.mounts}
    if "rshared" in modes:
        return "rshared"
    if "rslave" in modes:
        return "rslave"
    return None


def _namespaces(inputs: ContainerInputs) -> list[dict[str, Any]]:
    namespaces: list[dict[str, Any]] = [{"type": "mount"}]
    if inputs.network_mode != "NODE":
        namespaces.append({"type": "network", "path": inputs.netns_path} if inputs.netns_path else {"type": "network"})
    if inputs.ipc_mode != "NODE":
        namespaces.append({"type": "ipc", "path": inputs.ipcns_path} if inputs.ipcns_path else {"type": "ipc"})
    if inputs.utsns_path:
        namespaces.append({"type": "uts", "path": inputs.utsns_path})
    elif inputs.network_mode != "NODE":
        namespaces.append({"type": "uts"})
    if inputs.pid_mode == "POD":
        if not inputs.pod_pid:
            raise SpecError("pid namespace POD asked but the sandbox has no infra process")
        namespaces.append({"type": "pid", "path": f"/proc/{inputs.pod_pid}/ns/pid"})
    elif inputs.pid_mode == "TARGET":
        if not inputs.target_pid:
            raise SpecError("pid namespace TARGET asked but the target container is not running")
        namespaces.append({"type": "pid", "path": f"/proc/{inputs.target_pid}/ns/pid"})
    elif inputs.pid_mode == "CONTAINER":
        namespaces.append({"type": "pid"})
    elif inputs.pid_mode != "NODE":
        raise SpecError(f"unknown pid namespace mode {inputs.pid_mode!r}")
    if inputs.cgroup_namespace:
        namespaces.append({"type": "cgroup"})
    if inputs.userns_mode == "POD":
        namespaces.append({"type": "user", "path": inputs.userns_path} if inputs.userns_path else {"type": "user"})
    elif inputs.userns_mode != "NODE":
        raise SpecError(f"user namespace mode {inputs.userns_mode} is not supported (only POD and NODE)")
    return namespaces


def _id_mappings(mappings: list[IDMap], kind: str) -> list[dict[str, Any]]:
    if len(mappings) != 1:
        raise SpecError(f"user namespace needs exactly one {kind} mapping, got {len(mappings)}")
    m = mappings[0]
    if m.container_id != 0:
        raise SpecError(f"user namespace {kind} mapping must map container id 0")
    if m.size <= 0:
        raise SpecError(f"user namespace {kind} mapping has no length")
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size}]


def resources_object(res: Resources, privileged: bool = False, swap_accounting: bool = False,
                     devices: list[DeviceRequest] | None = None) -> dict[str, Any]:
    """linux.resources; also what ``runc update`` takes for UpdateContainerResources."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    if res.memory_limit < 0 or res.memory_swap_limit < 0:
        raise SpecError("memory limits cannot be negative")
    memory: dict[str, Any] = {}
    if res.memory_limit:
        memory["limit"] = res.memory_limit
        if swap_accounting:
            swap = res.memory_swap_limit or res.memory_limit  # no swap unless asked for
            if swap < res.memory_limit:
                raise SpecError("memory_swap_limit_in_bytes must be at least memory_limit_in_bytes")
            memory["swap"] = swap
    elif res.memory_swap_limit and swap_accounting:
        memory["swap"] = res.memory_swap_limit
    if memory:
        out["memory"] = memory
    if res.pids_limit:
        out["pids"] = {"limit": res.pids_limit}
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": size, "limit": limit} for size, limit in res.hugepage_limits]
    if res.unified:
        out["unified"] = dict(res.unified)
    if devices is not None:
        rules = [{"allow": True, "access": "rwm"}] if privileged else [dict(r) for r in _DEFAULT_DEVICE_RULES]
        if not privileged:
            for d in devices:
                rules.append({"allow": True, "type": d.type, "major": d.major, "minor": d.minor,
                              "access": d.permissions or "rwm"})
        out["devices"] = rules
    return out


def _device_entries(devices: list[DeviceRequest]) -> list[dict[str, Any]]:
    return [{"path": d.container_path, "type": d.type, "major": d.major, "minor": d.minor,
             "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid} for d in devices]


def _validate_device_permissions(devices: list[DeviceRequest]) -> None:
    for d in devices:
        if not d.container_path.startswith("/"):
            raise SpecError(f"device path {d.container_path!r} is not absolute")
        if d.permissions and set(d.permissions) - set("rwm"):
            raise SpecError(f"device permissions {d.permissions!r} must be a combination of r, w and m")


def _seccomp(inputs: ContainerInputs, caps: list[str]) -> dict[str, Any] | None:
    if inputs.privileged or inputs.seccomp == "unconfined":
        return None
    if inputs.seccomp == "runtime/default":
        return seccomp.default_profile(frozenset(caps), inputs.kernel_release)
    if inputs.seccomp == "localhost":
        if inputs.seccomp_localhost_profile is None:
            raise SpecError("localhost seccomp profile was not loaded")
        try:
            return seccomp.to_oci(inputs.seccomp_localhost_profile, frozenset(caps))
        except seccomp.SeccompProfileError as err:
            raise SpecError(str(err)) from err
    raise SpecError(f"unknown seccomp profile kind {inputs.seccomp!r}")


def container_spec(inputs: ContainerInputs) -> dict[str, Any]:
    """The complete config.json for one container."""
    caps = capability_set(inputs)
    _validate_device_permissions(inputs.devices)
    user = inputs.user
    process: dict[str, Any] = {
        "terminal": inputs.tty,
        "user": {"uid": user.uid, "gid": user.gid, "umask": 0o022},
        "args": process_args(inputs),
        "env": process_env(inputs),
        "cwd": inputs.working_dir or inputs.image_working_dir or "/",
        "capabilities": _capabilities_object(inputs, caps),
        "noNewPrivileges": inputs.no_new_privs,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    if inputs.apparmor_profile:
        process["apparmorProfile"] = inputs.apparmor_profile
    if inputs.selinux_label:
        process["selinuxLabel"] = inputs.selinux_label
    if not process["cwd"].startswith("/"):
        raise SpecError(f"working directory {process['cwd']!r} is not absolute")
    score = inputs.resources.oom_score_adj
    if not -1000 <= score <= 1000:
        raise SpecError(f"oom_score_adj {score} is out of range [-1000, 1000]")
    if inputs.oom_score_adj_floor is not None:
        score = max(score, inputs.oom_score_adj_floor)
    process["oomScoreAdj"] = score

    devices = list(inputs.host_devices) if inputs.privileged else []
    devices += [d for d in inputs.devices if d.container_path not in {h.container_path for h in devices}]
    linux: dict[str, Any] = {
        "namespaces": _namespaces(inputs),
        "resources": resources_object(inputs.resources, inputs.privileged, inputs.swap_accounting, inputs.devices),
        "devices": _device_entries(devices),
    }
    if inputs.cgroups_path:
        linux["cgroupsPath"] = inputs.cgroups_path
    if inputs.userns_mode == "POD":  # also when joining the pod's: runc maps its files' owners with them
        linux["uidMappings"] = _id_mappings(inputs.uid_mappings, "uid")
        linux["gidMappings"] = _id_mappings(inputs.gid_mappings, "gid")
    if not inputs.privileged:
        linux["maskedPaths"] = list(inputs.masked_paths or DEFAULT_MASKED_PATHS)
        linux["readonlyPaths"] = list(inputs.readonly_paths or DEFAULT_READONLY_PATHS)
    propagation = rootfs_propagation(inputs)
    if propagation:
        linux["rootfsPropagation"] = propagation
    profile = _seccomp(inputs, caps)
    if profile is not None:
        linux["seccomp"] = profile

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": inputs.readonly_rootfs},
        "mounts": _mounts(inputs),
        "linux": linux,
    }
    if inputs.annotations:
        spec["annotations"] = dict(inputs.annotations)
    return spec
