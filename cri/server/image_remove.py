"""RemoveImage: by tag, digest or id, removing the image with all its tags; unknown is fine."""

import grpc
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.context import Runtime


async def remove_image(rt: Runtime, request: api_pb2.RemoveImageRequest,
                       context: grpc.aio.ServicerContext) -> api_pb2.RemoveImageResponse:
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    await rt.images.remove(request.image.image)
    return api_pb2.RemoveImageResponse()


HANDLERS = {"RemoveImage": remove_image}
