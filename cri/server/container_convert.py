"""Conversions between CRI container messages and the core's container types (shared by container_* handlers)."""

from __future__ import annotations

import contextlib
import re
from typing import cast

from cri.api.v1 import api_pb2

from cri.core.containers import ContainerStats
from cri.errors import InvalidArgument
from cri.oci import signals
from cri.state.container_record import (ContainerRecord, ContainerRequest, DeviceSpec, IDMapSpec, MountSpec,
                                        ResourcesSpec, SecuritySpec)

_PROPAGATION = {api_pb2.PROPAGATION_PRIVATE: "private", api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared"}
_PROPAGATION_TO_CRI = {v: k for k, v in _PROPAGATION.items()}
_PROFILE_KIND = {api_pb2.SecurityProfile.RuntimeDefault: "runtime/default",
                 api_pb2.SecurityProfile.Unconfined: "unconfined", api_pb2.SecurityProfile.Localhost: "localhost"}


# One element of a kernel cpu/node list: N, N-M, or N-M:used/group (bitmap_parselist's grammar).
_LIST_ELEMENT = re.compile(r"(\d{1,6})(?:-(\d{1,6})(?::\d{1,6}/\d{1,6})?)?")


def _cpu_list(field: str, value: str) -> str:
    """A cpuset list checked as the kernel will parse it, so a typo is the caller's INVALID_ARGUMENT and not
    the kernel's EINVAL, which would read as a fault of the node."""
    for element in value.split(",") if value else ():
        m = _LIST_ELEMENT.fullmatch(element)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise InvalidArgument(f"{field} {value!r} is not a list like '0-3,6': {element!r}")
    return value


def resources_from_proto(r: api_pb2.LinuxContainerResources) -> ResourcesSpec:
    return ResourcesSpec(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes, oom_score_adj=r.oom_score_adj,
        cpuset_cpus=_cpu_list("cpuset_cpus", r.cpuset_cpus), cpuset_mems=_cpu_list("cpuset_mems", r.cpuset_mems),
        hugepage_limits=[(h.page_size, h.limit) for h in r.hugepage_limits],
        unified=dict(r.unified), memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes)


def resources_to_proto(r: ResourcesSpec) -> api_pb2.LinuxContainerResources:
    return api_pb2.LinuxContainerResources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes, oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[api_pb2.HugepageLimit(page_size=s, limit=lim) for s, lim in r.hugepage_limits],
        unified=r.unified, memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes)


def _seccomp(sc: api_pb2.LinuxContainerSecurityContext) -> tuple[str, str]:
    """The typed field wins; the deprecated path string is the fallback; neither means unconfined."""
    if sc.HasField("seccomp"):
        return _PROFILE_KIND[sc.seccomp.profile_type], sc.seccomp.localhost_ref
    path = sc.seccomp_profile_path
    if path in ("runtime/default", "docker/default"):
        return "runtime/default", ""
    if path.startswith("localhost/"):
        return "localhost", path[len("localhost"):]
    if path in ("", "unconfined"):
        return "unconfined", ""
    raise InvalidArgument(f"unknown seccomp profile path {path!r}")


def _apparmor(sc: api_pb2.LinuxContainerSecurityContext) -> tuple[str, str]:
    if sc.HasField("apparmor"):
        return _PROFILE_KIND[sc.apparmor.profile_type], sc.apparmor.localhost_ref
    name = sc.apparmor_profile
    if name.startswith("localhost/"):
        return "localhost", name[len("localhost/"):]
    return ({"runtime/default": "runtime/default", "unconfined": "unconfined"}.get(name, ""), "")


def _id_mapping(m: api_pb2.IDMapping) -> IDMapSpec:
    return IDMapSpec(container_id=m.container_id, host_id=m.host_id, length=m.length)


def _id_mapping_to_cri(m: IDMapSpec) -> api_pb2.IDMapping:
    return api_pb2.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)


def request_from_proto(request: api_pb2.CreateContainerRequest) -> ContainerRequest:
    config = request.config
    if not request.pod_sandbox_id:
        raise InvalidArgument("PodSandboxId must not be empty")
    if not config.metadata.name:
        raise InvalidArgument("ContainerConfig.Metadata.Name must not be empty")
    if not config.image.image:
        raise InvalidArgument("ContainerConfig.Image.Image must not be empty")
    sc = config.linux.security_context
    seccomp, seccomp_ref = _seccomp(sc)
    apparmor, apparmor_ref = _apparmor(sc)
    if sc.HasField("run_as_group") and not (sc.HasField("run_as_user") or sc.run_as_username):
        raise InvalidArgument("RunAsGroup is set without RunAsUser or RunAsUsername")
    ns = sc.namespace_options
    userns = ns.userns_options
    security = SecuritySpec(
        privileged=sc.privileged, add_capabilities=list(sc.capabilities.add_capabilities),
        drop_capabilities=list(sc.capabilities.drop_capabilities),
        add_ambient_capabilities=list(sc.capabilities.add_ambient_capabilities),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username, readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=list(sc.supplemental_groups),
        strict_supplemental_groups=sc.supplemental_groups_policy == api_pb2.SupplementalGroupsPolicy.Strict,
        no_new_privs=sc.no_new_privs, masked_paths=list(sc.masked_paths), readonly_paths=list(sc.readonly_paths),
        seccomp=seccomp, seccomp_localhost=seccomp_ref, apparmor=apparmor, apparmor_localhost=apparmor_ref,
        selinux={k: getattr(sc.selinux_options, k) for k in ("user", "role", "type", "level")
                 if getattr(sc.selinux_options, k)},
        pid_mode=ns.pid, target_id=ns.target_id, userns_mode=userns.mode if ns.HasField("userns_options") else 2,
        uid_mappings=[_id_mapping(m) for m in userns.uids], gid_mappings=[_id_mapping(m) for m in userns.gids])
    mounts = []
    for m in config.mounts:
        if m.propagation not in _PROPAGATION:
            raise InvalidArgument(f"unknown mount propagation {m.propagation}")
        image = m.image.image if m.HasField("image") else ""
        if image and m.host_path:
            raise InvalidArgument(f"mount {m.container_path}: host_path and image are mutually exclusive")
        if m.image_sub_path and not image:
            raise InvalidArgument(f"mount {m.container_path}: image_sub_path without an image")
        mounts.append(MountSpec(container_path=m.container_path, host_path=m.host_path, image=image,
                                image_sub_path=m.image_sub_path, readonly=m.readonly or bool(image),
                                propagation=_PROPAGATION[m.propagation], selinux_relabel=m.selinux_relabel,
                                recursive_read_only=m.recursive_read_only,
                                uid_mappings=[_id_mapping(i) for i in m.uidMappings],
                                gid_mappings=[_id_mapping(i) for i in m.gidMappings]))
    return ContainerRequest(
        sandbox_id=request.pod_sandbox_id, name=config.metadata.name, attempt=config.metadata.attempt,
        image=config.image.image, command=list(config.command), args=list(config.args),
        working_dir=config.working_dir, envs=[(kv.key, kv.value) for kv in config.envs], mounts=mounts,
        devices=[DeviceSpec(container_path=d.container_path, host_path=d.host_path, permissions=d.permissions or "rwm")
                 for d in config.devices],
        cdi_devices=[d.name for d in config.CDI_devices], labels=dict(config.labels),
        annotations=dict(config.annotations), log_path=config.log_path,
        stdin=config.stdin, stdin_once=config.stdin_once, tty=config.tty,
        resources=resources_from_proto(config.linux.resources), security=security,
        stop_signal=api_pb2.Signal.Name(config.stop_signal) if config.stop_signal else "")


def metadata(record: ContainerRecord) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=record.name, attempt=record.attempt)


def _state(record: ContainerRecord) -> api_pb2.ContainerState:
    return cast(api_pb2.ContainerState, record.state.cri)


def container_message(record: ContainerRecord) -> api_pb2.Container:
    return api_pb2.Container(
        id=record.id, pod_sandbox_id=record.sandbox_id, metadata=metadata(record),
        image=api_pb2.ImageSpec(image=record.image), image_ref=record.image_ref, image_id=record.image_id,
        state=_state(record), created_at=record.created_at, labels=record.labels,
        annotations=record.annotations)


def status_message(record: ContainerRecord) -> api_pb2.ContainerStatus:
    return api_pb2.ContainerStatus(
        id=record.id, metadata=metadata(record), state=_state(record), created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at, exit_code=record.exit_code,
        image=api_pb2.ImageSpec(image=record.image), image_ref=record.image_ref, image_id=record.image_id,
        reason=record.reason, message=record.message, labels=record.labels, annotations=record.annotations,
        mounts=[api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                              image=api_pb2.ImageSpec(image=m.image, image_ref=m.image_ref) if m.image else None,
                              image_sub_path=m.image_sub_path,
                              selinux_relabel=m.selinux_relabel, propagation=_PROPAGATION_TO_CRI[m.propagation],
                              recursive_read_only=m.recursive_read_only,
                              uidMappings=[_id_mapping_to_cri(i) for i in m.uid_mappings],
                              gidMappings=[_id_mapping_to_cri(i) for i in m.gid_mappings]) for m in record.mounts],
        log_path=record.log_path,
        resources=api_pb2.ContainerResources(linux=resources_to_proto(record.resources)),
        user=api_pb2.ContainerUser(linux=api_pb2.LinuxContainerUser(
            uid=record.uid, gid=record.gid, supplemental_groups=record.supplemental_groups)),
        stop_signal=cast(api_pb2.Signal, cri_signal(record.stop_signal)))


def _cri_signals() -> dict[int, int]:
    """Signal number -> the CRI's enum value; where names share a number the enum's first (SIGABRT, not SIGIOT)."""
    table: dict[int, int] = {}
    for name, value in api_pb2.Signal.items():
        if value != api_pb2.RUNTIME_DEFAULT:
            with contextlib.suppress(ValueError):
                table.setdefault(signals.signal_number(name), value)
    return table


_CRI_SIGNALS = _cri_signals()


def cri_signal(name: str) -> int:
    """The signal StopContainer sends ("" is SIGTERM) as the CRI names it; RUNTIME_DEFAULT if it has no name."""
    try:
        return _CRI_SIGNALS.get(signals.signal_number(name), api_pb2.RUNTIME_DEFAULT)
    except ValueError:
        return api_pb2.RUNTIME_DEFAULT


def stats_message(stats: ContainerStats) -> api_pb2.ContainerStats:
    record, sample = stats.record, stats.cgroup
    return api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(id=record.id, metadata=metadata(record), labels=record.labels,
                                               annotations=record.annotations),
        cpu=cpu_message(sample, stats.usage_nano_cores),
        memory=memory_message(sample),
        swap=swap_message(sample),
        io=io_message(sample),
        writable_layer=api_pb2.FilesystemUsage(
            timestamp=sample.timestamp_ns, fs_id=api_pb2.FilesystemIdentifier(mountpoint=record.rootfs),
            used_bytes=api_pb2.UInt64Value(value=stats.writable_bytes),
            inodes_used=api_pb2.UInt64Value(value=stats.writable_inodes)))


def _u64(value: int | None) -> api_pb2.UInt64Value | None:
    return api_pb2.UInt64Value(value=value) if value is not None else None


def _psi_data(data) -> api_pb2.PsiData | None:
    if data is None:
        return None
    return api_pb2.PsiData(Total=data.total_us, Avg10=data.avg10, Avg60=data.avg60, Avg300=data.avg300)


def psi_message(pressure) -> api_pb2.PsiStats | None:
    """PSI where the host has it (cgroup v2 with CONFIG_PSI); left unset, not zero, elsewhere."""
    if pressure is None:
        return None
    return api_pb2.PsiStats(Full=_psi_data(pressure.full), Some=_psi_data(pressure.some))


def cpu_message(sample, nano_cores: int | None) -> api_pb2.CpuUsage:
    return api_pb2.CpuUsage(timestamp=sample.timestamp_ns, usage_core_nano_seconds=_u64(sample.cpu_usage_ns),
                            usage_nano_cores=_u64(nano_cores if nano_cores is not None else 0),
                            psi=psi_message(sample.cpu_pressure))


def io_message(sample) -> api_pb2.IoUsage | None:
    if sample.io_pressure is None:
        return None
    return api_pb2.IoUsage(timestamp=sample.timestamp_ns, psi=psi_message(sample.io_pressure))


def swap_message(sample) -> api_pb2.SwapUsage | None:
    """memory.swap.current/max on v2, memsw minus memory on v1 (swapaccount=1); unset without swap accounting."""
    if sample.swap_usage is None:
        return None
    available = max(0, sample.swap_limit - sample.swap_usage) if sample.swap_limit is not None else None
    return api_pb2.SwapUsage(timestamp=sample.timestamp_ns, swap_usage_bytes=_u64(sample.swap_usage),
                             swap_available_bytes=_u64(available))


def memory_message(sample) -> api_pb2.MemoryUsage:
    available = None
    if sample.memory_limit is not None and sample.memory_working_set is not None:
        available = max(0, sample.memory_limit - sample.memory_working_set)
    return api_pb2.MemoryUsage(
        timestamp=sample.timestamp_ns, working_set_bytes=_u64(sample.memory_working_set),
        available_bytes=_u64(available), usage_bytes=_u64(sample.memory_usage), rss_bytes=_u64(sample.memory_rss),
        page_faults=_u64(sample.page_faults), major_page_faults=_u64(sample.major_page_faults),
        psi=psi_message(sample.memory_pressure))
