"""ImageStatus, ListImages and StreamImages. An unknown image is an empty answer, not an error (kubelet pulls
then). The plain answers are kept serialized until an image changes (cri/server/answers.py)."""

import json

import grpc
from collections.abc import AsyncIterator
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.batches import batches
from cri.context import Runtime


async def image_status(rt: Runtime, request: api_pb2.ImageStatusRequest,
                       context: grpc.aio.ServicerContext) -> api_pb2.ImageStatusResponse | bytes:
    if not request.image.image:
        raise InvalidArgument("image must not be empty")
    body = rt.answers.image_status(request.image.image)
    if request.verbose:
        record = rt.images.status(request.image.image)
        if record is not None:
            body += api_pb2.ImageStatusResponse(info={"info": json.dumps({
                "chainIDs": record.chain_ids, "created": record.created,
                "config": {"user": record.user, "env": record.env, "entrypoint": record.entrypoint,
                           "cmd": record.cmd, "workingDir": record.working_dir, "volumes": record.volumes,
                           "stopSignal": record.stop_signal, "labels": record.labels}})}).SerializeToString()
    return body


def _filter(request) -> str | None:
    return (request.filter.image.image if request.HasField("filter") else "") or None


async def list_images(rt: Runtime, request: api_pb2.ListImagesRequest,
                      context: grpc.aio.ServicerContext) -> api_pb2.ListImagesResponse | bytes:
    filter_ref = _filter(request)
    if filter_ref is None:
        return rt.answers.image_list()
    return api_pb2.ListImagesResponse(images=rt.images.answer(filter_ref, rt.answers.image_message))


async def stream_images(rt: Runtime, request: api_pb2.StreamImagesRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.StreamImagesResponse]:
    for batch in batches(rt.images.answer(_filter(request), rt.answers.image_message)):
        yield api_pb2.StreamImagesResponse(images=batch)


HANDLERS = {"ImageStatus": image_status, "ListImages": list_images, "StreamImages": stream_images}
