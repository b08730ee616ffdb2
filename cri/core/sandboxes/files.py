"""Pure rules and renderings for sandboxes: sysctl validation, resolv.conf, hosts, hostname."""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping

from cri.errors import InvalidArgument
from cri.state.container_record import IDMapSpec
from cri.state.sandbox_record import MODE_NODE, MODE_POD, NamespaceOptions

# Sysctls that live in a namespace the pod owns (the list Kubernetes and CRI-O accept).
_IPC_SYSCTLS = ("kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
                "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem")
_IPC_PREFIXES = ("fs.mqueue.",)
_NET_PREFIX = "net."
_SYSCTL_NAME = re.compile(r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", re.IGNORECASE)
_MODE_NAMES = {0: "POD", 1: "CONTAINER", 2: "NODE", 3: "TARGET"}
_ID_LIMIT = 1 << 32  # ids are 32 bits, and (uid_t)-1 means "no id"
_MAX_SEARCHES = 32
_MAX_SEARCH_CHARS = 2048


def sysctl_kind(name: str) -> str | None:
    """'ipc' or 'net' for a namespaced sysctl, None for a node-wide one."""
    dotted = name.replace("/", ".")
    if dotted in _IPC_SYSCTLS or dotted.startswith(_IPC_PREFIXES):
        return "ipc"
    if dotted.startswith(_NET_PREFIX):
        return "net"
    return None


def validate_sysctls(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> dict[str, str]:
    """The sysctls to apply inside the pod, keyed by /proc/sys-relative path; InvalidArgument on any other."""
    out: dict[str, str] = {}
    for name, value in sysctls.items():
        if not _SYSCTL_NAME.match(name) or ".." in name:
            raise InvalidArgument(f"sysctl {name!r} is not a valid sysctl name")
        if not isinstance(value, str) or len(value) > 4096 or any(c in value for c in "\n\0"):
            raise InvalidArgument(f"sysctl {name!r} has an invalid value")
        kind = sysctl_kind(name)
        if kind is None:
            raise InvalidArgument(f"sysctl {name!r} is not namespaced and cannot be set for a pod")
        if kind == "net" and host_network:
            raise InvalidArgument(f"sysctl {name!r} cannot be set for a pod that uses the host network")
        if kind == "ipc" and host_ipc:
            raise InvalidArgument(f"sysctl {name!r} cannot be set for a pod that uses the host IPC namespace")
        path = name if "/" in name else name.replace(".", "/")
        out[path] = value
    return out


def validate_user_namespace(opts: NamespaceOptions) -> None:
    """A pod gets its own user namespace (POD) with one uid and one gid range starting at root, or the host's."""
    mode = opts.user
    if mode == MODE_NODE:
        if opts.uid_mappings or opts.gid_mappings:
            raise InvalidArgument("user namespace mappings are only valid with user namespace mode POD, not NODE")
        return
    if mode != MODE_POD:
        raise InvalidArgument(f"user namespace mode {_MODE_NAMES.get(mode, mode)} is not supported for a pod: "
                              f"use POD (a user namespace of its own) or NODE (the host's)")
    for shared, what in ((opts.network == MODE_NODE, "network"), (opts.ipc == MODE_NODE, "IPC"),
                         (opts.pid == MODE_NODE, "PID")):
        if shared:
            raise InvalidArgument(f"a pod with its own user namespace cannot use the host's {what} namespace")
    _check_id_mappings(opts.uid_mappings, "uid")
    _check_id_mappings(opts.gid_mappings, "gid")


def _check_id_mappings(mappings: tuple[IDMapSpec, ...], kind: str) -> None:
    if len(mappings) != 1:
        raise InvalidArgument(f"a pod user namespace needs exactly one {kind} mapping, got {len(mappings)}")
    m = mappings[0]
    if m.container_id != 0:
        raise InvalidArgument(f"the pod user namespace's {kind} mapping must start at container id 0 (root), "
                              f"not {m.container_id}")
    if m.length <= 0:
        raise InvalidArgument(f"the pod user namespace's {kind} mapping has length {m.length}")
    if m.host_id < 0 or m.host_id + m.length >= _ID_LIMIT or m.length >= _ID_LIMIT:
        raise InvalidArgument(f"the pod user namespace's {kind} mapping {m.host_id}+{m.length} is out of the "
                              f"32-bit id range")


def validate_hostname(hostname: str) -> str:
    if len(hostname) > 64 or not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"hostname {hostname!r} is not a valid host name (RFC 1123, at most 64 characters)")
    return hostname


def render_resolv_conf(servers: Iterable[str], searches: Iterable[str], options: Iterable[str]) -> str:
    """resolv.conf text from a CRI DNSConfig; InvalidArgument on anything that could inject lines."""
    servers, searches, options = list(servers), list(searches), list(options)
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"DNS server {server!r} is not an IP address") from None
    if len(searches) > _MAX_SEARCHES or len(" ".join(searches)) > _MAX_SEARCH_CHARS:
        raise InvalidArgument(f"DNS search list is longer than {_MAX_SEARCHES} domains or {_MAX_SEARCH_CHARS} "
                              "characters")
    for item in searches + options:
        if not item or any(c.isspace() for c in item) or "\0" in item:
            raise InvalidArgument(f"DNS search domain or option {item!r} is empty or contains whitespace")
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n" if lines else ""


def render_hosts(hostname: str, ips: Iterable[str]) -> str:
    """/etc/hosts with the loopback names and the pod's own addresses under its hostname."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_MULTIPLIERS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
_MAX_BURST = (1 << 31) - 1  # what kubelet's CNI code passes: no burst limit of its own


def parse_bandwidth(annotations: Mapping[str, str]) -> dict[str, int] | None:
    """The CNI `bandwidth` capability from kubernetes.io/{ingress,egress}-bandwidth (bits per second)."""
    out: dict[str, int] = {}
    for key, direction in ((INGRESS_ANNOTATION, "ingress"), (EGRESS_ANNOTATION, "egress")):
        raw = annotations.get(key)
        if raw is None:
            continue
        match = _QUANTITY.match(raw.strip())
        if not match:
            raise InvalidArgument(f"annotation {key}={raw!r} is not a quantity such as 10M")
        rate = int(float(match.group(1)) * _MULTIPLIERS[match.group(2)])
        if not 1000 <= rate <= 32 * 10**12:
            raise InvalidArgument(f"annotation {key}={raw!r} is outside 1k..32T bits per second")
        out[f"{direction}Rate"] = rate
        out[f"{direction}Burst"] = _MAX_BURST
    return out or None
