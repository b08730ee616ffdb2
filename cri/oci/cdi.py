"""CDI (Container Device Interface) devices: what device plugins and DRA drivers hand kubelet, which sends them as
ContainerConfig.CDI_devices (or `cdi.k8s.io/<key>` annotations) by fully qualified name, `vendor.com/class=name`.

A vendor describes its devices in spec files (JSON or YAML) in the CDI directories, /etc/cdi then /var/run/cdi: a
later directory overrides an earlier one, two files of one directory defining the same device conflict. Each device
carries container edits (env, device nodes, mounts, hooks, additional gids, intelRdt); the spec's own top-level
edits apply once when any of its devices is used. `resolve` reads the files and the host (device numbers) and
fails naming any device it cannot resolve, never dropping one; `apply_edits` is pure: spec in, spec out.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from hostos.smallfile import read_regular

ANNOTATION_PREFIX = "cdi.k8s.io/"
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_VENDOR_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*")
_CLASS_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_MAX_SPEC_BYTES = 4 << 20


class CDIError(Exception):
    """A CDI device cannot be used; the message names it and why."""


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
                              defer_build=True)  # built when a CDI device is first asked for


class DeviceNode(_Edit):
    path: str
    host_path: str = ""
    type: str = ""
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


class Mount(_Edit):
    host_path: str
    container_path: str
    type: str = ""
    options: list[str] = []


class Hook(_Edit):
    hook_name: str
    path: str
    args: list[str] = []
    env: list[str] = []
    timeout: int | None = Field(None, gt=0)


class IntelRdt(_Edit):
    clos_id: str = Field("", validation_alias=AliasChoices("closID", "closId", "clos_id"), serialization_alias="closID")
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    enable_cmt: bool = Field(False, validation_alias=AliasChoices("enableCMT", "enable_cmt"),
                             serialization_alias="enableCMT")
    enable_mbm: bool = Field(False, validation_alias=AliasChoices("enableMBM", "enable_mbm"),
                             serialization_alias="enableMBM")


class ContainerEdits(_Edit):
    env: list[str] = []
    device_nodes: list[DeviceNode] = []
    mounts: list[Mount] = []
    hooks: list[Hook] = []
    additional_gids: list[int] = Field([], validation_alias=AliasChoices("additionalGids", "additionalGIDs",
                                                                         "additional_gids"))
    intel_rdt: IntelRdt | None = None


class _Device(_Edit):
    name: str
    annotations: dict[str, str] = {}
    container_edits: ContainerEdits = Field(default_factory=ContainerEdits)  # (an instance here would build it now)


class SpecFile(_Edit):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True,
                              defer_build=True)
    cdi_version: str
    kind: str
    annotations: dict[str, str] = {}
    devices: list[_Device] = Field(min_length=1)
    container_edits: ContainerEdits = Field(default_factory=ContainerEdits)  # (an instance here would build it now)


def parse_name(qualified: str) -> tuple[str, str]:
    """("vendor.com/class", "name") from "vendor.com/class=name"; CDIError when it is not such a name."""
    kind, eq, name = qualified.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not (eq and slash and _VENDOR_RE.fullmatch(vendor) and _CLASS_RE.fullmatch(cls) and _NAME_RE.fullmatch(name)):
        raise CDIError(f"CDI device name {qualified!r} is not a fully qualified name (vendor.com/class=name)")
    return kind, name


def requested_devices(cdi_devices: list[str], annotations: dict[str, str]) -> list[str]:
    """The devices a container asks for: CDI_devices, then the comma-separated `cdi.k8s.io/*` annotations (in
    key order), each once."""
    names = list(cdi_devices)
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            names += [n.strip() for n in annotations[key].split(",") if n.strip()]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _Found:
    spec: SpecFile
    path: Path
    device: _Device


def _read_spec(path: Path) -> SpecFile:
    data = read_regular(path, _MAX_SPEC_BYTES)  # (a FIFO named *.json would block a plain read forever)
    if len(data) > _MAX_SPEC_BYTES:
        raise CDIError("larger than 4 MiB")
    try:
        if path.suffix == ".json":
            doc = json.loads(data)
        else:
            import yaml  # only YAML specs need it
            doc = yaml.safe_load(data)
    except Exception as exc:  # json or yaml syntax: name the file and the error, whatever the parser
        raise CDIError(f"not valid {path.suffix[1:].upper()}: {exc}") from None
    try:
        spec = SpecFile.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CDIError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    vendor_class = spec.kind.partition("/")
    if not (vendor_class[1] and _VENDOR_RE.fullmatch(vendor_class[0]) and _CLASS_RE.fullmatch(vendor_class[2])):
        raise CDIError(f"kind {spec.kind!r} is not vendor.com/class")
    return spec


def _scan(dirs: list[Path]) -> tuple[dict[str, _Found], dict[str, str]]:
    """Every device by qualified name, and why a name is unusable (keyed "file:<path>" for a file that cannot be
    read, since its devices are unknown)."""
    found: dict[str, _Found] = {}
    broken: dict[str, str] = {}
    for directory in dirs:
        mine: dict[str, _Found] = {}
        conflicts: dict[str, str] = {}
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in files:
            try:
                spec = _read_spec(path)
            except (CDIError, OSError) as exc:
                broken[f"file:{path}"] = f"CDI spec file {path} is invalid: {exc}"
                continue
            for device in spec.devices:
                qualified = f"{spec.kind}={device.name}"
                if qualified in mine:
                    conflicts[qualified] = (f"CDI device {qualified} is defined twice, in {mine[qualified].path} "
                                            f"and {path}")
                else:
                    mine[qualified] = _Found(spec, path, device)
        for qualified, item in mine.items():  # a later directory replaces an earlier definition, or conflict
            found[qualified] = item
            broken.pop(qualified, None)
        broken.update(conflicts)
    return found, broken


def _host_node(qualified: str, node: DeviceNode) -> DeviceNode:
    """The node with its type, numbers and mode filled in from the host device where the spec leaves them out."""
    if not node.path.startswith("/"):
        raise CDIError(f"CDI device {qualified}: device node path {node.path!r} is not absolute")
    if node.permissions and set(node.permissions) - set("rwm"):
        raise CDIError(f"CDI device {qualified}: device node {node.path} permissions {node.permissions!r} must be "
                       f"a combination of r, w and m")
    host_path = node.host_path or node.path
    if node.type and (node.major is not None or node.type == "p"):  # described fully: the host need not have it
        return node
    try:
        st = os.stat(host_path)
    except OSError as exc:
        raise CDIError(f"CDI device {qualified}: device node {host_path} on the host: {exc.strerror}") from None
    kinds = {stat.S_ISCHR: "c", stat.S_ISBLK: "b", stat.S_ISFIFO: "p"}
    kind = next((k for test, k in kinds.items() if test(st.st_mode)), None)
    if kind is None:
        raise CDIError(f"CDI device {qualified}: {host_path} on the host is not a device node")
    if node.type and node.type != kind and not (node.type == "u" and kind == "c"):  # u: an unbuffered char device
        raise CDIError(f"CDI device {qualified}: {host_path} is of type {kind}, the spec says {node.type}")
    return node.model_copy(update={
        "type": node.type or kind,
        "major": os.major(st.st_rdev) if node.major is None else node.major,
        "minor": os.minor(st.st_rdev) if node.minor is None else node.minor,
        "file_mode": stat.S_IMODE(st.st_mode) if node.file_mode is None else node.file_mode})


def _checked(qualified: str, edits: ContainerEdits) -> ContainerEdits:
    for env in edits.env:
        if "=" not in env or env.startswith("="):
            raise CDIError(f"CDI device {qualified}: env entry {env!r} is not NAME=VALUE")
    for mount in edits.mounts:
        if not mount.container_path.startswith("/"):
            raise CDIError(f"CDI device {qualified}: mount destination {mount.container_path!r} is not absolute")
    for hook in edits.hooks:
        if hook.hook_name not in HOOK_NAMES:
            raise CDIError(f"CDI device {qualified}: unknown hook {hook.hook_name!r} (one of {', '.join(HOOK_NAMES)})")
        if not hook.path.startswith("/"):
            raise CDIError(f"CDI device {qualified}: hook path {hook.path!r} is not absolute")
    return edits.model_copy(update={"device_nodes": [_host_node(qualified, n) for n in edits.device_nodes]})


def resolve(names: list[str], dirs: list[Path]) -> list[ContainerEdits]:
    """The edits for `names` in order (each spec's own edits once, before its first device); CDIError naming the
    first device that is malformed, unknown, conflicting, or whose host device is missing."""
    if not names:
        return []
    for qualified in names:
        parse_name(qualified)
    found, broken = _scan(dirs)
    edits: list[ContainerEdits] = []
    applied: set[Path] = set()
    for qualified in names:
        if qualified in broken:
            raise CDIError(broken[qualified])
        item = found.get(qualified)
        if item is None:
            unreadable = [why for key, why in broken.items() if key.startswith("file:")]
            raise CDIError(f"unknown CDI device {qualified}: no CDI spec in {', '.join(map(str, dirs))} defines it"
                           + (f" ({'; '.join(unreadable)})" if unreadable else ""))
        if item.path not in applied:
            applied.add(item.path)
            edits.append(_checked(qualified, item.spec.container_edits))
        edits.append(_checked(qualified, item.device.container_edits))
    return edits


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def apply_edits(spec: dict[str, Any], edits: list[ContainerEdits]) -> dict[str, Any]:
    """A copy of the OCI spec with the resolved edits applied: env replaces a variable of the same name, a device
    node or mount replaces one at the same container path, hooks and additional gids are added, and mounts are
    ordered parents first."""
    if not edits:
        return spec
    out: dict[str, Any] = json.loads(json.dumps(spec))
    process = out.setdefault("process", {})
    linux = out.setdefault("linux", {})
    for edit in edits:
        env = process.setdefault("env", [])
        for entry in edit.env:
            name = entry.split("=", 1)[0]
            env[:] = [e for e in env if e.split("=", 1)[0] != name] + [entry]
        for node in edit.device_nodes:
            devices = linux.setdefault("devices", [])
            device: dict[str, object] = {"path": node.path, "type": node.type, "major": node.major or 0,
                                         "minor": node.minor or 0}
            device.update({k: v for k, v in (("fileMode", node.file_mode), ("uid", node.uid), ("gid", node.gid))
                          if v is not None})
            devices[:] = [d for d in devices if d.get("path") != node.path] + [device]
            if node.type != "p":  # a FIFO is no device to the cgroup
                rules = linux.setdefault("resources", {}).setdefault("devices", [])
                rules.append({"allow": True, "type": "c" if node.type == "u" else node.type, "major": node.major or 0,
                              "minor": node.minor or 0, "access": node.permissions or "rwm"})
        for mount in edit.mounts:
            mounts = out.setdefault("mounts", [])
            options = list(mount.options)
            kind = mount.type or "bind"
            if kind == "bind" and not {"bind", "rbind"} & set(options):
                options.insert(0, "rbind")
            mounts[:] = [m for m in mounts if m.get("destination") != mount.container_path]
            mounts.append({"destination": mount.container_path, "type": kind, "source": mount.host_path,
                           "options": options})
        for hook in edit.hooks:
            hook_entry = {"path": hook.path, **({"args": hook.args} if hook.args else {}),
                     **({"env": hook.env} if hook.env else {}),
                     **({"timeout": hook.timeout} if hook.timeout else {})}
            out.setdefault("hooks", {}).setdefault(hook.hook_name, []).append(hook_entry)
        gids = [g for g in edit.additional_gids if g]
        if gids:
            user = process.setdefault("user", {})
            user["additionalGids"] = list(dict.fromkeys([*user.get("additionalGids", []), *gids]))
        if edit.intel_rdt is not None:
            linux["intelRdt"] = edit.intel_rdt.model_dump(by_alias=True, exclude_defaults=True)
    if "mounts" in out:
        out["mounts"].sort(key=lambda m: _depth(m.get("destination", "")))  # stable: parents before children
    return out
