"""Create calls whose caller gave up: their retry gets what the first attempt made.

kubelet repeats RunPodSandbox and CreateContainer with the same request after its deadline passes (or after the
daemon restarted under it). Answering "name is reserved" would strand the first attempt's pod or container until
kubelet's garbage collection; instead the retry that asks for exactly the same thing gets it, once. A different
request under the name does not use up the claim: it fails as the duplicate it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable, Generic, Iterator, TypeVar

from cri.state.index import Index, NameRegistry

R = TypeVar("R")


class Claims(Generic[R]):
    """The reserved names a retry may claim, and the creates still running under a name."""

    def __init__(self, names: NameRegistry, index: Index[R]) -> None:
        self._names = names
        self._index = index
        self._abandoned: set[str] = set()
        self._creating: dict[str, asyncio.Event] = {}

    def abandon(self, name: str) -> None:
        """The caller of the create under `name` gave up, or its reply may have died with the daemon."""
        self._abandoned.add(name)

    @contextlib.contextmanager
    def creating(self, name: str) -> Iterator[None]:
        """Around a create under `name`: a retry that comes meanwhile waits for it to end."""
        done = self._creating[name] = asyncio.Event()
        try:
            yield
        finally:
            done.set()
            del self._creating[name]

    async def claim(self, name: str, finished: Callable[[R], bool], same: Callable[[R], bool]) -> R | None:
        """What the abandoned create under `name` made, if it `finished` and the retry asks for the `same`."""
        if name not in self._abandoned:
            return None
        creating = self._creating.get(name)
        if creating is not None:  # the retry came while the first attempt still runs: wait for it
            await creating.wait()
        holder = self._names.holder(name)
        record = self._index.find(holder) if holder else None
        if record is None or not finished(record):
            self._abandoned.discard(name)
            return None
        if not same(record) or name not in self._abandoned:  # not the same request, or claimed meanwhile
            return None
        self._abandoned.discard(name)
        return record
