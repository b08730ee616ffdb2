"""Status: the RuntimeReady and NetworkReady conditions kubelet gates the node on, and what the runtime can do.

Features are advertised only where they work: kubelet and critest turn them on from these flags alone.
"""

import json
from typing import Any

import grpc
from cri.api.v1 import api_pb2

from cri.oci import apparmor, host_facts, mounts
from cri.context import Runtime
from hostos import cgroups
from hostos.cgroups.driver import driver


def _condition(kind: str, ready: bool, reason: str, message: str) -> api_pb2.RuntimeCondition:
    return api_pb2.RuntimeCondition(type=kind, status=ready, reason="" if ready else reason,
                                    message="" if ready else message)


async def _handler_features(rt: Runtime, name: str) -> api_pb2.RuntimeHandlerFeatures:
    path = rt.config.runtime_path(name)
    rro = path is not None and await mounts.supports_rro(path)
    # kubelet puts the pod's id mappings on every mount of a `hostUsers: false` pod: a handler that cannot make
    # idmapped mounts (runc 1.1) could run the pod but none of kubelet's containers, so it is not advertised; nor
    # where the kernel cannot idmap the rootfs (before 5.19), which would leave the image's files nobody's.
    userns = (rt.sandboxes.user_namespaces_problem(name) is None and path is not None
              and await mounts.supports_idmap(path) and await rt.images.idmap_problem() is None)
    return api_pb2.RuntimeHandlerFeatures(recursive_read_only_mounts=rro, user_namespaces=userns)


def _lsm(rt: Runtime) -> dict[str, Any]:
    """The security modules containers can use here: AppArmor profiles only with AppArmor on (RuntimeDefault
    where apparmor_parser can load pycri's), SELinux labels only with SELinux on."""
    on = host_facts.apparmor_enabled()
    can_load = on and rt.containers.apparmor_loader.parser_path() is not None
    return {"apparmor": {"enabled": on, "runtimeDefault": apparmor.DEFAULT_PROFILE if can_load else ""},
            "selinux": {"enabled": host_facts.selinux_enabled()}}


async def status(rt: Runtime, request: api_pb2.StatusRequest,
                 context: grpc.aio.ServicerContext) -> api_pb2.StatusResponse:
    runtime_ready, runtime_reason, runtime_message = rt.runtime_condition()
    network_ready, network_reason, network_message = rt.network_condition()
    response = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=[
            _condition("RuntimeReady", runtime_ready, runtime_reason, runtime_message),
            _condition("NetworkReady", network_ready, network_reason, network_message),
        ]),
        # Merge and Strict are both applied when the container's groups are resolved (cri/oci/users.py).
        # user_namespaces_host_network (CRI v1.36): a pod with its own user namespace and the host's network is
        # refused (cri/core/sandboxes/files.validate_user_namespace), so kubelet is told it cannot have one.
        features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True, user_namespaces_host_network=False),
    )
    # The default handler is listed a second time under "": kubelet and critest look a pod without a
    # RuntimeClass up by that name.
    default = rt.config.runtime.default_runtime
    for name in ["", *rt.config.runtime.handlers]:
        response.runtime_handlers.add(name=name, features=await _handler_features(rt, name or default))
    if request.verbose:
        response.info["config"] = rt.config.model_dump_json()
        response.info["podCIDR"] = json.dumps(rt.pod_cidr)
        response.info["lsm"] = json.dumps(_lsm(rt))
        response.info["cgroups"] = json.dumps({"manager": driver(rt.config.runtime.cgroup_manager).name,
                                               **cgroups.describe()})
    return response


HANDLERS = {"Status": status}
