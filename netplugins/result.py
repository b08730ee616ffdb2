"""CNI ADD results: parsing the 0.2.0, 0.3.x/0.4.0 and 1.0.0 shapes into one typed form."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


class InvalidResult(ValueError):
    """A plugin printed something that is not a CNI result."""


@dataclass(frozen=True)
class IPConfig:
    address: str            # CIDR form, e.g. "10.88.0.5/16"
    gateway: str | None = None
    interface: int | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class NetworkResult:
    """What a network chain reported; `raw` is kept verbatim for the cache and for DEL/CHECK prevResult."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[dict[str, Any], ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def pod_ips(self) -> list[str]:
        """Addresses on sandbox interfaces (all addresses when none names an interface), IPv4 first."""
        in_sandbox = [ip for ip in self.ips
                      if ip.interface is None or (0 <= ip.interface < len(self.interfaces)
                                                  and self.interfaces[ip.interface].sandbox)]
        chosen = in_sandbox or list(self.ips)
        seen: list[str] = []
        for ip in sorted(chosen, key=lambda i: i.version):
            if ip.ip not in seen:
                seen.append(ip.ip)
        return seen


def _check_cidr(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidResult(f"{what} is not a string")
    try:
        ipaddress.ip_interface(value)
    except ValueError as e:
        raise InvalidResult(f"{what} {value!r} is not an address in CIDR form") from e
    return value


def _check_ip(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError as e:
        raise InvalidResult(f"{what} {value!r} is not an IP address") from e
    checked: str = value
    return checked


def parse_result(data: Any, cni_version: str | None = None) -> NetworkResult:
    """Parse a plugin's ADD output; `cni_version` is the network's when the result omits its own."""
    if not isinstance(data, dict):
        raise InvalidResult("result is not a JSON object")
    version = data.get("cniVersion") or cni_version or "1.0.0"
    if version.startswith(("0.1.", "0.2.")):
        return _parse_legacy(data, version)
    interfaces = []
    for item in data.get("interfaces") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidResult("interface entry without a name")
        interfaces.append(Interface(item["name"], str(item.get("mac", "")), str(item.get("sandbox", ""))))
    ips = []
    for item in data.get("ips") or []:
        if not isinstance(item, dict):
            raise InvalidResult("ips entry is not an object")
        iface = item.get("interface")
        if iface is not None and not isinstance(iface, int):
            raise InvalidResult("ips interface index is not a number")
        ips.append(IPConfig(_check_cidr(item.get("address"), "ips address"),
                            _check_ip(item.get("gateway"), "gateway"), iface))
    routes = tuple(r for r in data.get("routes") or [] if isinstance(r, dict))
    dns = data["dns"] if isinstance(data.get("dns"), dict) else {}
    return NetworkResult(version, tuple(interfaces), tuple(ips), routes, dns, data)


def _parse_legacy(data: dict[str, Any], version: str) -> NetworkResult:
    ips = []
    routes: list[dict[str, Any]] = []
    for key in ("ip4", "ip6"):
        block = data.get(key)
        if isinstance(block, dict):
            ips.append(IPConfig(_check_cidr(block.get("ip"), f"{key}.ip"), _check_ip(block.get("gateway"), "gateway")))
            routes.extend(r for r in block.get("routes") or [] if isinstance(r, dict))
    dns = data["dns"] if isinstance(data.get("dns"), dict) else {}
    return NetworkResult(version, (), tuple(ips), tuple(routes), dns, data)
