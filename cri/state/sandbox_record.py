"""The persisted record of a pod sandbox, and the validated request the sandbox manager runs from."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from cri.state.container_record import IDMapSpec, ResourcesSpec

SandboxState = Literal["creating", "ready", "notready"]
# CRI NamespaceMode values: POD=0, CONTAINER=1, NODE=2, TARGET=3.
NamespaceMode = Literal[0, 1, 2, 3]
MODE_POD: Final = 0
MODE_CONTAINER: Final = 1
MODE_NODE: Final = 2
MODE_TARGET: Final = 3


class DNSSettings(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []


class PortMappingSpec(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    container_port: int = Field(ge=0, le=65535)
    host_port: int = Field(0, ge=0, le=65535)
    host_ip: str = ""


class NamespaceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)
    network: NamespaceMode = MODE_POD
    pid: NamespaceMode = MODE_CONTAINER
    ipc: NamespaceMode = MODE_POD
    target_id: str = ""
    user: NamespaceMode = MODE_NODE          # POD: the pod's own user namespace, with these mappings
    uid_mappings: tuple[IDMapSpec, ...] = ()
    gid_mappings: tuple[IDMapSpec, ...] = ()

    @property
    def host_network(self) -> bool:
        return self.network == MODE_NODE

    @property
    def host_ipc(self) -> bool:
        return self.ipc == MODE_NODE

    @property
    def host_pid(self) -> bool:
        return self.pid == MODE_NODE

    @property
    def own_userns(self) -> bool:
        return self.user == MODE_POD


class SandboxSpec(BaseModel):
    """What RunPodSandbox asked for, already free of protobuf; `original` is the request config as a dict."""
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start

    name: str
    namespace: str
    uid: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    runtime_handler: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    dns: DNSSettings = DNSSettings()
    port_mappings: list[PortMappingSpec] = []
    cgroup_parent: str = ""
    sysctls: dict[str, str] = {}
    namespace_options: NamespaceOptions = NamespaceOptions()
    privileged: bool = False
    original: dict[str, Any] = {}

    @property
    def reserved_name(self) -> str:
        """The CRI name kubelet derives from metadata; unique until RemovePodSandbox."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


class SandboxRecord(BaseModel):
    """Everything needed to report, stop, remove or reconcile a sandbox, including after a daemon restart."""
    model_config = ConfigDict(defer_build=True)  # built at first use, not at the daemon's start

    id: str
    name: str
    namespace: str
    uid: str
    attempt: int = 0
    state: SandboxState = "creating"
    created_at: int = 0                  # nanoseconds since the epoch
    runtime_handler: str = ""            # the handler that runs it: the default one when none was named
    requested_handler: str | None = None  # what RunPodSandbox named ("" = the default); None in older records
    log_directory: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    hostname: str = ""
    namespace_options: NamespaceOptions = NamespaceOptions()
    sandbox_dir: str = ""                # holds the pinned namespaces, shm, resolv.conf, hosts, hostname
    netns_path: str = ""                 # "" when the pod uses the host's namespace
    ipc_path: str = ""
    uts_path: str = ""
    userns_path: str = ""                # the pod's own user namespace, which owns the others; "" for the host's
    shm_path: str = ""                   # per-pod tmpfs, or /dev/shm with host IPC
    resolv_conf_path: str = ""
    hosts_path: str = ""
    hostname_path: str = ""
    infra_pid: int = 0                   # pid 1 of the pod's PID namespace when it is shared (catatonit)
    infra_start_time: int = 0            # /proc/<pid>/stat start time, so a reused pid is never killed
    infra_parent_pid: int = 0
    ips: list[str] = []
    network_ready: bool = False          # a CNI ADD succeeded and no DEL has run since
    cgroup_parent: str = ""              # the pod-level cgroup (containers go below it)
    cgroup_path: str = ""                # the sandbox's own cgroup below the parent (holds the infra)
    cgroups_created: list[str] = []      # absolute dirs this sandbox created, removed on RemovePodSandbox
    port_mappings: list[PortMappingSpec] = []
    dns: DNSSettings = DNSSettings()
    sysctls: dict[str, str] = {}
    privileged: bool = False
    config: dict[str, Any] = {}          # the original PodSandboxConfig, for containers and verbose status
    resources: ResourcesSpec | None = None  # the last UpdatePodSandboxResources: the pod's resources ...
    overhead: ResourcesSpec | None = None   # ... and its overhead

    @property
    def reserved_name(self) -> str:
        """The CRI name kubelet derives from metadata; unique until RemovePodSandbox."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"

    @property
    def reported_handler(self) -> str:
        """The handler as the caller named it: kubelet compares it with the RuntimeClass it asked for."""
        return self.runtime_handler if self.requested_handler is None else self.requested_handler
