"""RemoveImage: by tag, digest or id, removing the image with all its tags; unknown is fine."""

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument


async def remove_image(rt, request, context):
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    await rt.images.remove(request.image.image)
    return api_pb2.RemoveImageResponse()


HANDLERS = {"RemoveImage": remove_image}
