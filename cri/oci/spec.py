"""OCI runtime-spec config.json from plain inputs (pure: no I/O, no protobuf).

The core gathers everything that needs the host or the image (user resolution, the seccomp profile file, the
daemon's own capabilities) into ``ContainerInputs`` (spec_inputs.py); this module only decides, with
spec_resources.py for the cgroup limits and devices. Errors are ``SpecError`` with a message for the user; the
core maps them to InvalidArgument.
"""

from __future__ import annotations

from typing import Any

from cri.oci import seccomp
from cri.oci.spec_inputs import (ALL_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_PATH, DEFAULT_READONLY_PATHS,
                                 ContainerInputs, IDMap, MountRequest, SpecError)
from cri.oci.spec_resources import device_entries, resources_object, validate_device_permissions

OCI_VERSION = "1.0.2"
PROPAGATION_OPTIONS = {"private": "rprivate", "rslave": "rslave", "rshared": "rshared"}


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
    validate_device_permissions(inputs.devices)
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
        "devices": device_entries(devices),
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
