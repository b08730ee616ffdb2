"""ImageRecord -> CRI Image message, shared by ImageStatus and ListImages."""

from __future__ import annotations

from cri.api.v1 import api_pb2

from storage.image_records import ImageRecord


def user_fields(user: str) -> dict:
    """The CRI reports a numeric image user as uid and a name as username; no user means neither."""
    name = user.split(":", 1)[0]
    if not name:
        return {}
    if name.isdigit():
        return {"uid": api_pb2.Int64Value(value=int(name))}
    return {"username": name}


def to_cri_image(record: ImageRecord, pinned: bool) -> api_pb2.Image:
    return api_pb2.Image(id=record.id, repo_tags=record.repo_tags, repo_digests=record.repo_digests,
                         size=record.size, spec=api_pb2.ImageSpec(image=record.id), pinned=pinned,
                         **user_fields(record.user))
