"""ImageStatus, ListImages and StreamImages. An unknown image is an empty answer, not an error (kubelet pulls then)."""

import json

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.batches import batches
from cri.server.image_convert import to_cri_image


async def image_status(rt, request, context):
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    record = rt.images.status(request.image.image)
    if record is None:
        return api_pb2.ImageStatusResponse()
    response = api_pb2.ImageStatusResponse(image=to_cri_image(record, rt.images.pinned(record)))
    if request.verbose:
        response.info["info"] = json.dumps({"chainIDs": record.chain_ids, "created": record.created,
                                            "config": {"user": record.user, "env": record.env,
                                                       "entrypoint": record.entrypoint, "cmd": record.cmd,
                                                       "workingDir": record.working_dir, "volumes": record.volumes,
                                                       "stopSignal": record.stop_signal, "labels": record.labels}})
    return response


def _images(rt, request) -> list[api_pb2.Image]:
    filter_ref = request.filter.image.image if request.HasField("filter") else ""
    return [to_cri_image(r, rt.images.pinned(r)) for r in rt.images.list(filter_ref or None)]


async def list_images(rt, request, context):
    return api_pb2.ListImagesResponse(images=_images(rt, request))


async def stream_images(rt, request, context):
    for batch in batches(_images(rt, request)):
        yield api_pb2.StreamImagesResponse(images=batch)


HANDLERS = {"ImageStatus": image_status, "ListImages": list_images, "StreamImages": stream_images}
