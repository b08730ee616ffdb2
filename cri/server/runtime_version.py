"""Version: who we are, for kubelet's and crictl's first handshake."""

from importlib.metadata import PackageNotFoundError, version

import grpc
from cri.api.v1 import api_pb2
from cri.context import Runtime

try:
    PYCRI_VERSION = version("pycri")
except PackageNotFoundError:  # running from a source tree that was not installed
    PYCRI_VERSION = "0.0.0+unknown"

_RESPONSE = api_pb2.VersionResponse(
    version="0.1.0",
    runtime_name="pycri",
    runtime_version=PYCRI_VERSION,
    runtime_api_version="v1",
)


async def version_rpc(rt: Runtime, request: api_pb2.VersionRequest,
                      context: grpc.aio.ServicerContext) -> api_pb2.VersionResponse:
    return _RESPONSE


HANDLERS = {"Version": version_rpc}
