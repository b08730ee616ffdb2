"""Spec assembly for CreateContainer: what the request may ask of this host and runtime, then everything that
reads the host or the image (users, devices, capabilities, seccomp profiles) fed to the pure spec function."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cri.config import Config
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.oci import apparmor, cdi, host_facts, mounts as oci_mounts, selinux, spec as oci_spec, spec_inputs
from cri.oci.rootfs import RootfsPathError, ensure_rootfs_dir, read_rootfs_file, secure_join
from cri.oci.runtime import OCIRuntime
from cri.oci.users import UserRequest, UserResolutionError, resolve_user
from cri.state.container_record import (ContainerRecord, ContainerRequest, IDMapSpec, ResourcesSpec,
                                        SecuritySpec)
from cri.state.container_state import ContainerState
from cri.state.sandbox_record import SandboxRecord
from hostos import cgroups
from hostos.cgroups.driver import driver
from hostos.smallfile import read_regular
from storage.image_records import ImageRecord

MODE_NAMES = {0: "POD", 1: "CONTAINER", 2: "NODE", 3: "TARGET"}

# How long a localhost seccomp profile that is a FIFO may take to be written (the worker thread waits meanwhile).
PROFILE_FIFO_WAIT = 10.0


def container_log_path(log_directory: str, log_path: str) -> str:
    """The log file kubelet asked for: relative to the pod's log directory, and never outside it."""
    if not log_path:
        return ""
    joined = os.path.normpath(os.path.join(log_directory, log_path))
    if log_directory and not joined.startswith(os.path.normpath(log_directory).rstrip("/") + "/"):
        raise InvalidArgument(f"log path {log_path!r} leaves the pod's log directory {log_directory!r}")
    if not os.path.isabs(joined):
        raise InvalidArgument(f"log path {log_path!r} is relative and the pod has no log directory")
    return joined


def reserved_name(request: ContainerRequest, sandbox: SandboxRecord) -> str:
    return f"{request.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_{request.attempt}"


def pod_root_ids(sandbox: SandboxRecord) -> tuple[int, int]:
    """The host uid and gid of the root of the pod's user namespace."""
    opts = sandbox.namespace_options
    return opts.uid_mappings[0].host_id, opts.gid_mappings[0].host_id


def _user_namespace(sec: SecuritySpec, sandbox: SandboxRecord) -> dict[str, Any]:
    """A container of a pod with its own user namespace joins it, with the pod's mappings; no other one may."""
    mode = MODE_NAMES.get(sec.userns_mode, str(sec.userns_mode))
    if mode in ("CONTAINER", "TARGET"):
        raise InvalidArgument(f"user namespace mode {mode} is not supported: a container uses its pod's (POD) "
                              f"or the host's (NODE)")
    opts = sandbox.namespace_options
    if not sandbox.userns_path:
        if mode == "POD":
            raise InvalidArgument(f"the container asks for its pod's user namespace, but pod sandbox {sandbox.id} "
                                  f"has none: create the pod with userns_options mode POD")
        return {"userns_mode": "NODE"}
    for mine, pods, kind in ((sec.uid_mappings, opts.uid_mappings, "uid"),
                             (sec.gid_mappings, opts.gid_mappings, "gid")):
        if mine and tuple(mine) != tuple(pods):
            raise InvalidArgument(f"the container's {kind} mappings differ from those of its pod's user namespace")
    return {"userns_mode": "POD", "userns_path": sandbox.userns_path,
            "uid_mappings": list(_id_maps(opts.uid_mappings)), "gid_mappings": list(_id_maps(opts.gid_mappings))}


def _mount_requests(request: ContainerRequest, volumes: tuple[Path, ...]) -> list[spec_inputs.MountRequest]:
    """The request's mounts for the spec; an image volume binds its read-only view (or the image_sub_path in it),
    already idmapped by storage where the pod needs it, so kubelet's mappings on it are not applied again."""
    out = []
    views = iter(volumes)
    for m in request.mounts:
        if not m.image:
            out.append(spec_inputs.MountRequest(m.container_path, m.host_path, m.readonly, m.propagation,
                                             m.recursive_read_only, _id_maps(m.uid_mappings), _id_maps(m.gid_mappings)))
            continue
        view = next(views)
        try:
            source = secure_join(view, m.image_sub_path) if m.image_sub_path else view
        except RootfsPathError as e:
            raise InvalidArgument(f"mount {m.container_path}: image_sub_path {m.image_sub_path!r}: {e}") from e
        if not source.exists():
            raise InvalidArgument(f"mount {m.container_path}: image_sub_path {m.image_sub_path!r} does not exist in "
                                  f"image {m.image}")
        out.append(spec_inputs.MountRequest(m.container_path, str(source), True, "private", m.recursive_read_only))
    return out


def _id_maps(mappings: Iterable[IDMapSpec]) -> tuple[spec_inputs.IDMap, ...]:
    return tuple(spec_inputs.IDMap(m.container_id, m.host_id, m.length) for m in mappings)


async def check_recursive_read_only(request: ContainerRequest, handler: str, runtime: OCIRuntime) -> None:
    """Refuse rro up front where the runtime lacks it: an older runtime ignores the option and leaves the
    submounts writable."""
    wanted = [m.container_path for m in request.mounts if m.recursive_read_only]
    if wanted and not await oci_mounts.supports_rro(runtime.path):
        raise InvalidArgument(
            f"mount {wanted[0]}: recursive read-only mounts are not supported by runtime handler {handler!r} "
            f"({runtime.path}) on this host (it needs Linux 5.12+ and runc 1.1+ or crun 1.8+); "
            f"set recursive_read_only to false or use a handler that supports it")


async def check_idmapped_mounts(request: ContainerRequest, sandbox: SandboxRecord, handler: str,
                                runtime: OCIRuntime) -> None:
    """Refuse a mount's uid/gid mappings up front where the runtime cannot idmap: runc 1.1 ignores them, and
    the volume would show host ids (nobody, or a stranger's files) inside the pod. (Mappings in a pod without
    a user namespace are refused by the spec.)"""
    wanted = [m.container_path for m in request.mounts if (m.uid_mappings or m.gid_mappings) and not m.image]
    if not wanted or not sandbox.userns_path:
        return
    if not await oci_mounts.supports_idmap(runtime.path):
        raise InvalidArgument(
            f"mount {wanted[0]}: idmapped mounts (uid/gid mappings) are not supported by runtime handler "
            f"{handler!r} ({runtime.path}) on this host (it needs Linux 5.12+ and crun 1.8.1+ or runc 1.2+); "
            f"run the pod with a handler that supports them, or without mappings on its mounts")
    pid_mode = MODE_NAMES.get(request.security.pid_mode, "CONTAINER")
    if pid_mode in ("POD", "TARGET"):
        # crun 1.8 makes the idmapped mount after joining an existing PID namespace, inside the user
        # namespace, where the kernel refuses it (EPERM from mount_setattr).
        raise InvalidArgument(
            f"mount {wanted[0]}: idmapped mounts are not supported in a container that joins an existing PID "
            f"namespace (mode {pid_mode}) with runtime handler {handler!r}; use PID namespace mode CONTAINER "
            f"(no shareProcessNamespace) or no mappings on its mounts")


async def apparmor_profile(request: ContainerRequest, loader: apparmor.Loader) -> str:
    """The AppArmor profile the container will run under, loaded (pycri's default) or checked loaded (a named
    one); FailedPrecondition when it cannot be, as the host lacks it (peers answer UNKNOWN, with the same sense)."""
    sec = request.security
    try:
        profile = apparmor.choose(sec.apparmor, sec.apparmor_localhost, sec.privileged, host_facts.apparmor_enabled())
        await loader.require(profile)
    except apparmor.AppArmorError as e:
        raise FailedPrecondition(str(e)) from e
    return profile


def resources(config: Config, r: ResourcesSpec) -> spec_inputs.Resources:
    return spec_inputs.Resources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares, cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems, memory_limit=r.memory_limit_in_bytes,
        memory_swap_limit=r.memory_swap_limit_in_bytes, oom_score_adj=r.oom_score_adj,
        hugepage_limits=tuple((size, limit) for size, limit in r.hugepage_limits), unified=r.unified,
        pids_limit=config.runtime.pids_limit)


def _load_profile(path: str) -> dict[str, Any]:
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"localhost seccomp profile path {path!r} must be absolute")
    try:
        # A FIFO is read until its writer closes it, for a bounded time: it held a worker thread for good.
        profile: dict[str, Any] = json.loads(read_regular(path, 1 << 20, fifo_wait=PROFILE_FIFO_WAIT))
        return profile
    except FileNotFoundError:
        raise NotFound(f"seccomp profile {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"seccomp profile {path} cannot be read: {e}") from None


def build_spec(config: Config, find: Callable[[str], ContainerRecord | None], record: ContainerRecord,
               request: ContainerRequest, sandbox: SandboxRecord, image: ImageRecord, rootfs: Path,
               volumes: tuple[Path, ...] = (), cdi_edits: Sequence[cdi.ContainerEdits] = ()) -> dict[str, Any]:
    """Everything that reads the host or the image, then the pure spec functions (runs in a thread).

    ``find`` looks up the target container of PID namespace mode TARGET; the record learns its uid and gids.
    ``volumes`` are the image volumes' views, in the order of their mounts; ``cdi_edits`` the resolved CDI devices.
    """
    sec = request.security
    try:
        user = resolve_user(
            UserRequest(run_as_user=sec.run_as_user, run_as_username=sec.run_as_username,
                        run_as_group=sec.run_as_group, supplemental_groups=tuple(sec.supplemental_groups),
                        strict_supplemental_groups=sec.strict_supplemental_groups, image_user=image.user),
            read_rootfs_file(rootfs, "/etc/passwd"), read_rootfs_file(rootfs, "/etc/group"))
        for volume in image.volumes:
            ensure_rootfs_dir(rootfs, volume)
    except (UserResolutionError, RootfsPathError) as e:
        raise InvalidArgument(str(e)) from e
    record.uid, record.gid = user.uid, user.gid
    record.supplemental_groups = list(user.additional_gids)
    opts = sandbox.namespace_options
    pid_mode = MODE_NAMES.get(sec.pid_mode, "CONTAINER")
    if pid_mode == "POD" and opts.host_pid:
        pid_mode = "NODE"  # the pod's PID namespace is the host's: there is no infra process, join it as the pod does
    target_pid = 0
    if pid_mode == "TARGET":
        target = find(sec.target_id)
        if target is None or target.state != ContainerState.RUNNING:
            raise NotFound(f"target container {sec.target_id!r} for the pid namespace is not running")
        target_pid = target.pid
    problems = oci_mounts.host_propagation_problems([(m.host_path, m.propagation) for m in request.mounts])
    if problems:
        raise FailedPrecondition(problems[0])
    devices = []
    for device in request.devices:
        found = host_facts.device_request(device.host_path, device.container_path, device.permissions)
        if found is None:
            raise InvalidArgument(f"device {device.host_path!r} is not a device node on this host")
        devices.append(found)
    profile = None
    seccomp_kind = sec.seccomp
    if seccomp_kind == "runtime/default" and config.runtime.seccomp_profile:
        seccomp_kind, profile = "localhost", _load_profile(str(config.runtime.seccomp_profile))
    elif seccomp_kind == "localhost" and not sec.privileged:
        profile = _load_profile(sec.seccomp_localhost)
    manager = driver(config.runtime.cgroup_manager)
    inputs = spec_inputs.ContainerInputs(
        container_id=record.id, rootfs=str(rootfs), command=request.command, args=request.args,
        image_entrypoint=image.entrypoint, image_cmd=image.cmd, image_env=image.env, envs=request.envs,
        working_dir=request.working_dir, image_working_dir=image.working_dir, tty=request.tty,
        stdin=request.stdin, user=user, hostname=sandbox.hostname, readonly_rootfs=sec.readonly_rootfs,
        mounts=_mount_requests(request, volumes),
        devices=devices, host_devices=host_facts.host_devices() if sec.privileged else [],
        hosts_path=sandbox.hosts_path, resolv_path=sandbox.resolv_conf_path, hostname_path=sandbox.hostname_path,
        shm_path=sandbox.shm_path,
        network_mode="NODE" if opts.host_network else "POD", ipc_mode="NODE" if opts.host_ipc else "POD",
        pid_mode=pid_mode, netns_path=sandbox.netns_path, ipcns_path=sandbox.ipc_path,
        utsns_path=sandbox.uts_path, pod_pid=sandbox.infra_pid, target_pid=target_pid,
        **_user_namespace(sec, sandbox),
        privileged=sec.privileged, add_capabilities=sec.add_capabilities,
        # as containerd and CRI-O do on cgroup v2: the container sees its own cgroup as /sys/fs/cgroup
        cgroup_namespace=cgroups.layout().is_v2 and not sec.privileged,
        drop_capabilities=sec.drop_capabilities, add_ambient_capabilities=sec.add_ambient_capabilities,
        host_capabilities=host_facts.daemon_capabilities(),
        default_capabilities=tuple("CAP_" + c for c in config.runtime.default_capabilities),
        no_new_privs=sec.no_new_privs, seccomp=seccomp_kind, seccomp_localhost_profile=profile,
        masked_paths=sec.masked_paths, readonly_paths=sec.readonly_paths,
        apparmor_profile=record.apparmor_profile,
        selinux_label=selinux.process_label(sec.selinux, host_facts.selinux_enabled()),
        resources=resources(config, request.resources), oom_score_adj_floor=host_facts.oom_score_adj_floor(),
        swap_accounting=cgroups.swap_accounting(),
        cgroups_path=manager.spec_path(record.cgroups_path),
        annotations={**request.annotations, "io.kubernetes.cri.container-name": request.name,
                     "io.kubernetes.cri.sandbox-id": sandbox.id, "io.kubernetes.cri.container-type": "container",
                     **dict(manager.spec_annotations)},
    )
    try:
        return cdi.apply_edits(oci_spec.container_spec(inputs), list(cdi_edits))
    except spec_inputs.SpecError as e:
        raise InvalidArgument(str(e)) from e
