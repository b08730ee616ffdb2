"""Conversions between CRI sandbox messages and the core's sandbox types (shared by the sandbox_* handlers)."""

from __future__ import annotations

from typing import cast

from cri.api.v1 import api_pb2
from google.protobuf.json_format import MessageToDict

from cri.errors import InvalidArgument
from cri.state.container_record import IDMapSpec
from cri.state.sandbox_record import (MODE_NODE, DNSSettings, NamespaceOptions, PortMappingSpec, SandboxRecord,
                                      SandboxSpec)

_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
STATE_TO_CRI = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}
STATE_FROM_CRI = {api_pb2.SANDBOX_READY: "ready", api_pb2.SANDBOX_NOTREADY: "notready"}


def spec_from_request(request: api_pb2.RunPodSandboxRequest) -> SandboxSpec:
    """The core's SandboxSpec; InvalidArgument for what a CRI client must always send."""
    config = request.config
    meta = config.metadata
    for field in ("name", "namespace", "uid"):
        if not getattr(meta, field):
            raise InvalidArgument(f"PodSandboxConfig.Metadata.{field.capitalize()} must not be empty")
    if meta.attempt < 0:
        raise InvalidArgument("PodSandboxConfig.Metadata.Attempt must not be negative")
    linux = config.linux
    security = linux.security_context
    ns = security.namespace_options
    ports = []
    for p in config.port_mappings:
        if p.protocol not in _PROTOCOLS:
            raise InvalidArgument(f"unknown port mapping protocol {p.protocol}")
        if not (0 <= p.container_port <= 65535 and 0 <= p.host_port <= 65535):
            raise InvalidArgument(f"port mapping {p.host_port}:{p.container_port} is out of range")
        ports.append(PortMappingSpec(protocol=_PROTOCOLS[p.protocol], container_port=p.container_port,
                                     host_port=p.host_port, host_ip=p.host_ip))
    return SandboxSpec(
        name=meta.name, namespace=meta.namespace, uid=meta.uid, attempt=meta.attempt,
        hostname=config.hostname, log_directory=config.log_directory, runtime_handler=request.runtime_handler,
        labels=dict(config.labels), annotations=dict(config.annotations),
        dns=DNSSettings(servers=list(config.dns_config.servers), searches=list(config.dns_config.searches),
                        options=list(config.dns_config.options)),
        port_mappings=ports, cgroup_parent=linux.cgroup_parent, sysctls=dict(linux.sysctls),
        namespace_options=NamespaceOptions(
            network=ns.network, pid=ns.pid, ipc=ns.ipc, target_id=ns.target_id,
            user=ns.userns_options.mode if ns.HasField("userns_options") else MODE_NODE,
            uid_mappings=_id_mappings(ns.userns_options.uids), gid_mappings=_id_mappings(ns.userns_options.gids)),
        privileged=security.privileged,
        original=MessageToDict(config, preserving_proto_field_name=True))


def _id_mappings(mappings) -> tuple[IDMapSpec, ...]:
    return tuple(IDMapSpec(container_id=m.container_id, host_id=m.host_id, length=m.length) for m in mappings)


def metadata(record: SandboxRecord) -> api_pb2.PodSandboxMetadata:
    return api_pb2.PodSandboxMetadata(name=record.name, uid=record.uid, namespace=record.namespace,
                                      attempt=record.attempt)


def _mode(mode: int) -> api_pb2.NamespaceMode:
    return cast(api_pb2.NamespaceMode, mode)


def namespace_option(record: SandboxRecord) -> api_pb2.NamespaceOption:
    opts = record.namespace_options
    option = api_pb2.NamespaceOption(network=_mode(opts.network), pid=_mode(opts.pid), ipc=_mode(opts.ipc),
                                     target_id=opts.target_id)
    if opts.own_userns:
        option.userns_options.CopyFrom(api_pb2.UserNamespace(
            mode=_mode(opts.user), uids=[_id_mapping(m) for m in opts.uid_mappings],
            gids=[_id_mapping(m) for m in opts.gid_mappings]))
    return option


def _id_mapping(m: IDMapSpec) -> api_pb2.IDMapping:
    return api_pb2.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)


def status_message(record: SandboxRecord) -> api_pb2.PodSandboxStatus:
    """PodSandboxStatus of a record (also what each GetContainerEvents event carries)."""
    ips = record.ips
    return api_pb2.PodSandboxStatus(
        id=record.id, metadata=metadata(record), state=STATE_TO_CRI.get(record.state, api_pb2.SANDBOX_NOTREADY),
        created_at=record.created_at,
        network=api_pb2.PodSandboxNetworkStatus(ip=ips[0] if ips else "",
                                                additional_ips=[api_pb2.PodIP(ip=ip) for ip in ips[1:]]),
        linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=namespace_option(record))),
        labels=record.labels, annotations=record.annotations, runtime_handler=record.reported_handler)


def sandbox_message(record: SandboxRecord) -> api_pb2.PodSandbox:
    """One entry of ListPodSandbox and StreamPodSandboxes."""
    return api_pb2.PodSandbox(id=record.id, metadata=metadata(record),
                              state=STATE_TO_CRI.get(record.state, api_pb2.SANDBOX_NOTREADY),
                              created_at=record.created_at, labels=record.labels, annotations=record.annotations,
                              runtime_handler=record.reported_handler)
