"""RuntimeConfig and UpdateRuntimeConfig: the cgroup driver out, the pod CIDR in."""

import ipaddress

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime
from hostos.cgroups.driver import driver


async def runtime_config(rt: Runtime, request: api_pb2.RuntimeConfigRequest,
                         context: grpc.aio.ServicerContext) -> api_pb2.RuntimeConfigResponse:
    systemd = driver(rt.config.runtime.cgroup_manager).name == "systemd"  # "auto" as the start resolved it
    return api_pb2.RuntimeConfigResponse(linux=api_pb2.LinuxRuntimeConfiguration(
        cgroup_driver=api_pb2.SYSTEMD if systemd else api_pb2.CGROUPFS))


async def update_runtime_config(rt: Runtime, request: api_pb2.UpdateRuntimeConfigRequest,
                                context: grpc.aio.ServicerContext) -> api_pb2.UpdateRuntimeConfigResponse:
    cidrs = [c.strip() for c in request.runtime_config.network_config.pod_cidr.split(",") if c.strip()]
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidArgument(f"pod CIDR {cidr!r} is not a valid CIDR") from None
    rt.set_pod_cidr(",".join(cidrs))
    return api_pb2.UpdateRuntimeConfigResponse()


HANDLERS = {"RuntimeConfig": runtime_config, "UpdateRuntimeConfig": update_runtime_config}
