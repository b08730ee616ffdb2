"""ImageFsInfo: bytes and inodes of the image store and of the containers' writable layers."""

import time

import grpc
from cri.api.v1 import api_pb2
from cri.context import Runtime


async def image_fs_info(rt: Runtime, request: api_pb2.ImageFsInfoRequest,
                        context: grpc.aio.ServicerContext) -> api_pb2.ImageFsInfoResponse:
    now = time.time_ns()
    response = api_pb2.ImageFsInfoResponse()
    for usage in await rt.images.fs_info():
        entry = api_pb2.FilesystemUsage(timestamp=now, fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
                                        used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
                                        inodes_used=api_pb2.UInt64Value(value=usage.inodes_used))
        target = response.image_filesystems if usage.kind == "image" else response.container_filesystems
        target.append(entry)
    return response


HANDLERS = {"ImageFsInfo": image_fs_info}
