"""What the core gathers for a container's OCI spec: plain values (no I/O, no protobuf), read by spec.py, which
only decides. Errors are ``SpecError`` with a message for the user; the core maps them to InvalidArgument."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cri.oci.users import ResolvedUser

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
