"""Single-use tokens that stand for a validated Exec/Attach/PortForward request in a streaming URL."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from cri.errors import ResourceExhausted

from .backend import StreamRequest

TOKEN_TTL = 60.0
MAX_PENDING = 1000


class TokenCache:
    """Tokens are 128 random bits, usable once, and forgotten after ``ttl`` seconds.

    Entries are kept in insertion order, so expiry only ever has to look at the oldest ones.
    """

    def __init__(self, ttl: float = TOKEN_TTL, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._max, self._clock = ttl, max_pending, clock
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def issue(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._entries) >= self._max:
            raise ResourceExhausted(f"too many pending streaming requests (max {self._max})")
        token = secrets.token_urlsafe(16)
        self._entries[token] = (self._clock() + self._ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request behind token, removing it; None when unknown, used or expired."""
        self._expire()
        entry = self._entries.pop(token, None)
        return entry[1] if entry else None

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[token]
