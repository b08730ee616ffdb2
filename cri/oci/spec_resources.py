"""linux.resources and linux.devices of a spec: the cgroup limits (also what ``runc update`` takes for
UpdateContainerResources) and the device nodes and rules."""

from __future__ import annotations

from typing import Any

from cri.oci.spec_inputs import DeviceRequest, Resources, SpecError

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


def device_entries(devices: list[DeviceRequest]) -> list[dict[str, Any]]:
    return [{"path": d.container_path, "type": d.type, "major": d.major, "minor": d.minor,
             "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid} for d in devices]


def validate_device_permissions(devices: list[DeviceRequest]) -> None:
    for d in devices:
        if not d.container_path.startswith("/"):
            raise SpecError(f"device path {d.container_path!r} is not absolute")
        if d.permissions and set(d.permissions) - set("rwm"):
            raise SpecError(f"device permissions {d.permissions!r} must be a combination of r, w and m")
