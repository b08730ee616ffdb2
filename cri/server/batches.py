"""Splits a List* answer into the responses of its Stream* twin (CRI's CRIListStreaming, KEP-5825).

A node with many pods can exceed gRPC's message size limit with one List* answer; the Stream* calls send
the same items in several messages instead. Each message holds at least one item and every item is
sent exactly once; an empty answer is a stream closed without a message.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from google.protobuf.message import Message

# Well under kubelet's 16 MiB receive limit and gRPC's 4 MiB default, so a batch always gets through.
MAX_BATCH_BYTES = 1 << 20

M = TypeVar("M", bound=Message)


def batches(items: Iterable[M], limit: int = MAX_BATCH_BYTES) -> Iterator[list[M]]:
    """Consecutive lists of items whose serialized size stays under `limit` (a larger item goes alone)."""
    batch: list[M] = []
    size = 0
    for item in items:
        n = item.ByteSize()
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch
