"""ImageStatus and ListImages. An unknown image is an empty answer, not an error (kubelet pulls then)."""

import json

from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
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


async def list_images(rt, request, context):
    filter_ref = request.filter.image.image if request.HasField("filter") else ""
    return api_pb2.ListImagesResponse(images=[to_cri_image(r, rt.images.pinned(r))
                                                    for r in rt.images.list(filter_ref or None)])


HANDLERS = {"ImageStatus": image_status, "ListImages": list_images}
