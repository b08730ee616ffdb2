"""PullImage: the image id is the image_ref kubelet keeps."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime
from storage.auth import Credentials
from storage.errors import RegistryConfigError


async def pull_image(rt: Runtime, request: api_pb2.PullImageRequest,
                     context: grpc.aio.ServicerContext) -> api_pb2.PullImageResponse:
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    auth = request.auth
    try:
        credentials = Credentials.from_fields(auth.username, auth.password, auth.auth, auth.identity_token,
                                              auth.registry_token)
    except RegistryConfigError as exc:
        raise InvalidArgument(f"auth for {request.image.image}: {exc}") from None
    record = await rt.images.pull(request.image.image, None if credentials.empty else credentials,
                                  pod=_pod_of(rt, request.sandbox_config.metadata))
    return api_pb2.PullImageResponse(image_ref=record.id)


def _pod_of(rt: Runtime, metadata) -> str:
    """The ready sandbox kubelet pulls for (it sends the pod's config), so the pull shows in its timeline."""
    if not metadata.uid:
        return ""
    for record in rt.sandboxes.list():
        if record.uid == metadata.uid and record.name == metadata.name and record.state == "ready":
            return record.id
    return ""


HANDLERS = {"PullImage": pull_image}
