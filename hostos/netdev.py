"""Per-interface traffic counters of a network namespace, from its /proc/.../net/dev."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from hostos.libc import LIBC

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """/proc/<pid>/net/dev without the loopback: what a pod sent and received."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        f = counters.split()
        if len(f) < 16 or name.strip() == "lo":
            continue
        out.append(InterfaceStats(name.strip(), rx_bytes=int(f[0]), rx_errors=int(f[2]), tx_bytes=int(f[8]),
                                  tx_errors=int(f[10]), rx_packets=int(f[1]), rx_dropped=int(f[3]),
                                  tx_packets=int(f[9]), tx_dropped=int(f[11])))
    return out


def namespace_stats(netns: str | os.PathLike[str]) -> list[InterfaceStats]:
    """Interfaces of a pinned network namespace (a pod without any process in it still has one).

    /proc/thread-self/net/dev shows the calling thread's namespace, so a thread of its own enters the
    namespace, reads and ends: no thread that other code reuses ever runs in a pod's namespace. Empty when
    the namespace is gone.
    """
    result: list[InterfaceStats] = []

    def read() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                return
        finally:
            os.close(fd)
        try:
            result.extend(parse_net_dev(Path("/proc/thread-self/net/dev").read_text()))
        except OSError:
            pass

    reader = threading.Thread(target=read, name="netns-stats", daemon=True)
    reader.start()
    reader.join()
    return result
