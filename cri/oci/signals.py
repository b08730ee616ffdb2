"""Signal names as images and the CRI spell them, to numbers (pure)."""

from __future__ import annotations

import re
import signal

# "SIGRTMIN+3" / "RTMAX-2" (images, the kernel's way) and "SIGRTMINPLUS3" / "SIGRTMAXMINUS2" (the CRI's enum).
_REALTIME = re.compile(r"SIGRT(MIN|MAX)(?:(\+|-|PLUS|MINUS)(\d+))?")


def signal_number(name: str) -> int:
    """"SIGTERM", "TERM", "15", "SIGRTMIN+3" or "SIGRTMINPLUS3" -> its number; "" is SIGTERM, the default stop
    signal; ValueError when unknown."""
    if not name:
        return int(signal.SIGTERM)
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    realtime = _REALTIME.fullmatch(text)
    if realtime:
        base, op, offset = realtime.groups()
        number = int(signal.SIGRTMIN if base == "MIN" else signal.SIGRTMAX)
        number += 0 if op is None else int(offset) if op in ("+", "PLUS") else -int(offset)
        if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            raise ValueError(f"signal {name!r} is out of the real-time range")
        return number
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None
