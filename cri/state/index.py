"""In-memory indexes: objects by id with unique-prefix lookup, and reserved names."""

from __future__ import annotations

import bisect
from typing import Generic, Iterator, TypeVar

from cri.errors import AlreadyExists, InvalidArgument, NotFound

T = TypeVar("T")


class Index(Generic[T]):
    """Objects by 64-hex id. crictl passes truncated ids, so any unique prefix finds an object."""

    def __init__(self, kind: str):
        self.kind = kind
        self._objects: dict[str, T] = {}
        self._sorted: list[str] = []

    def add(self, object_id: str, obj: T) -> None:
        if object_id not in self._objects:
            bisect.insort(self._sorted, object_id)
        self._objects[object_id] = obj

    def remove(self, object_id: str) -> None:
        if self._objects.pop(object_id, None) is not None:
            i = bisect.bisect_left(self._sorted, object_id)
            del self._sorted[i]

    def find(self, ref: str) -> T | None:
        """The object whose id is `ref` or starts with it; None when there is none."""
        if not ref:
            return None
        obj = self._objects.get(ref)
        if obj is not None:
            return obj
        i = bisect.bisect_left(self._sorted, ref)
        matches = []
        for object_id in self._sorted[i:i + 2]:
            if object_id.startswith(ref):
                matches.append(object_id)
        if len(matches) > 1:
            raise InvalidArgument(f"{self.kind} id prefix {ref!r} is ambiguous: it matches {matches[0]} and "
                                  f"{matches[1]}")
        return self._objects[matches[0]] if matches else None

    def get(self, ref: str) -> T:
        obj = self.find(ref)
        if obj is None:
            raise NotFound(f"{self.kind} {ref!r} not found")
        return obj

    def __contains__(self, object_id: str) -> bool:
        return object_id in self._objects

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)


class NameRegistry:
    """Names reserved for the object that holds them, so a duplicate create fails cleanly."""

    def __init__(self, kind: str):
        self.kind = kind
        self._holders: dict[str, str] = {}

    def reserve(self, name: str, object_id: str) -> None:
        holder = self._holders.setdefault(name, object_id)
        if holder != object_id:
            raise AlreadyExists(f"{self.kind} name {name!r} is reserved for {holder}")

    def release(self, name: str, object_id: str | None = None) -> None:
        """Free `name`; with `object_id`, only if that object still holds it."""
        if object_id is None or self._holders.get(name) == object_id:
            self._holders.pop(name, None)

    def holder(self, name: str) -> str | None:
        return self._holders.get(name)
