"""PullImage: the image id is the image_ref kubelet keeps."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from storage.auth import Credentials
from storage.errors import ConfigError


async def pull_image(rt, request, context):
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    auth = request.auth
    try:
        credentials = Credentials.from_fields(auth.username, auth.password, auth.auth, auth.identity_token,
                                              auth.registry_token)
    except ConfigError as exc:
        raise InvalidArgument(f"auth for {request.image.image}: {exc}") from None
    record = await rt.images.pull(request.image.image, None if credentials.empty else credentials)
    return api_pb2.PullImageResponse(image_ref=record.id)


HANDLERS = {"PullImage": pull_image}
