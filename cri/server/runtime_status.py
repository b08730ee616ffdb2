"""Status: the RuntimeReady and NetworkReady conditions kubelet gates the node on, and what the runtime can do.

Features are advertised only where they work: kubelet and critest turn them on from these flags alone.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

import grpc
from cri.api.v1 import api_pb2

from cri.oci import apparmor, host_facts, mounts
from cri.config import RuntimeConfig
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
                 context: grpc.aio.ServicerContext) -> api_pb2.StatusResponse | bytes:
    if request.verbose:
        response = await _response(rt, rt.runtime_condition(), rt.network_condition())
        response.info["config"] = rt.config.model_dump_json()
        response.info["podCIDR"] = json.dumps(rt.pod_cidr)
        response.info["lsm"] = json.dumps(_lsm(rt))
        response.info["cgroups"] = json.dumps({"manager": driver(rt.config.runtime.cgroup_manager).name,
                                               **cgroups.describe()})
        return response
    return await _kept(rt)


async def _response(rt: Runtime, runtime: tuple[bool, str, str],
                    network: tuple[bool, str, str]) -> api_pb2.StatusResponse:
    response = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=[
            _condition("RuntimeReady", *runtime),
            _condition("NetworkReady", *network),
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
    return response


# How long a Status answer (without verbose) is reused. kubelet asks every few seconds; what the answer says of
# the host (the runtime binaries and conmon installed, what each runtime can do: a dozen stat/access calls, then the
# message) changes with a package upgrade, not between two calls. A SIGHUP that replaces the handler table, or a
# change of the network's readiness (memory), makes a new answer at once.
STATUS_FRESH = 1.0


@dataclass
class _Kept:
    handlers: RuntimeConfig
    network: tuple[bool, str, str]
    made: float
    body: bytes


async def _kept(rt: Runtime) -> bytes:
    kept = rt.answers.status
    network = rt.network_condition()
    if (kept is None or kept.handlers is not rt.config.runtime or kept.network != network
            or time.monotonic() - kept.made > STATUS_FRESH):
        handlers = rt.config.runtime
        body = (await _response(rt, rt.runtime_condition(), network)).SerializeToString()
        kept = rt.answers.status = _Kept(handlers, network, time.monotonic(), body)
    return kept.body


HANDLERS = {"Status": status}
