"""The persisted record of a container, and the validated CreateContainer request the manager runs from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cri.state.container_state import ContainerState, check_move


class IDMapSpec(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    container_id: int
    host_id: int
    length: int


class MountSpec(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    container_path: str
    host_path: str = ""
    image: str = ""            # an image volume (KEP-4639): this image's root filesystem, read-only, not host_path
    image_sub_path: str = ""   # ... or this directory of it
    image_ref: str = ""        # the volume image's repo digest (or id), as ContainerStatus reports it
    readonly: bool = False
    propagation: Literal["private", "rslave", "rshared"] = "private"
    selinux_relabel: bool = False
    recursive_read_only: bool = False
    uid_mappings: list[IDMapSpec] = []  # an idmapped mount (pods with their own user namespace)
    gid_mappings: list[IDMapSpec] = []


class DeviceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    container_path: str
    host_path: str
    permissions: str = "rwm"


class ResourcesSpec(BaseModel):
    """CRI LinuxContainerResources, minus protobuf."""
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: list[tuple[str, int]] = []
    unified: dict[str, str] = {}
    memory_swap_limit_in_bytes: int = 0


class SecuritySpec(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start
    privileged: bool = False
    add_capabilities: list[str] = []
    drop_capabilities: list[str] = []
    add_ambient_capabilities: list[str] = []
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: list[int] = []
    strict_supplemental_groups: bool = False
    no_new_privs: bool = False
    masked_paths: list[str] = []
    readonly_paths: list[str] = []
    seccomp: Literal["unconfined", "runtime/default", "localhost"] = "unconfined"
    seccomp_localhost: str = ""
    apparmor: Literal["", "unconfined", "runtime/default", "localhost"] = ""
    apparmor_localhost: str = ""
    selinux: dict[str, str] = {}
    pid_mode: int = 1          # CRI NamespaceMode: POD=0, CONTAINER=1, NODE=2, TARGET=3
    target_id: str = ""
    userns_mode: int = 2
    uid_mappings: list[IDMapSpec] = []
    gid_mappings: list[IDMapSpec] = []


class ContainerRequest(BaseModel):
    """What CreateContainer asked for, already free of protobuf."""
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start

    sandbox_id: str
    name: str
    attempt: int = 0
    image: str
    command: list[str] = []
    args: list[str] = []
    working_dir: str = ""
    envs: list[tuple[str, str]] = []
    mounts: list[MountSpec] = []
    devices: list[DeviceSpec] = []
    cdi_devices: list[str] = []  # fully qualified CDI device names
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: ResourcesSpec = ResourcesSpec()
    security: SecuritySpec = SecuritySpec()
    stop_signal: str = ""


class ContainerRecord(BaseModel):
    """Everything needed to report, stop, remove or reconcile a container, including after a daemon restart."""
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start

    id: str
    sandbox_id: str
    name: str
    attempt: int = 0
    reserved_name: str
    state: ContainerState = ContainerState.CREATING
    created_at: int = 0              # nanoseconds since the epoch
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    image: str = ""                  # what the user asked for
    image_ref: str = ""              # the image's repo digest (or id) it resolved to
    image_id: str = ""
    runtime_handler: str = ""
    apparmor_profile: str = ""       # what process.apparmorProfile names ("" without AppArmor)
    bundle: str = ""
    rootfs: str = ""
    log_path: str = ""               # absolute: the sandbox's log directory + the config's log_path
    cgroups_path: str = ""
    conmon_cgroup: str = ""          # conmon's own cgroup, beside the container's, so it outlives the daemon's
    pid: int = 0
    conmon_pid: int = 0
    stop_signal: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    mounts: list[MountSpec] = []
    resources: ResourcesSpec = ResourcesSpec()
    uid: int = 0
    gid: int = 0
    supplemental_groups: list[int] = []
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    request: dict[str, Any] = {}     # the validated request, for verbose status
    restore_from: str = ""           # the checkpoint archive it was made from: StartContainer restores its process

    def move(self, new: ContainerState) -> None:
        """Change state along a move the table in cri/state/container_state.py allows (Internal otherwise)."""
        check_move(self.state, new, self.id)
        self.state = new
