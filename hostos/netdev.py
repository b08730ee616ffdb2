"""Per-interface traffic counters of a network namespace, from /proc/<pid>/net/dev."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """/proc/<pid>/net/dev without the loopback: what a pod sent and received."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) < 16 or name.strip() == "lo":
            continue
        out.append(InterfaceStats(name.strip(), int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10])))
    return out


def network_stats(pid: int) -> list[InterfaceStats]:
    """Interfaces of the network namespace ``pid`` lives in; empty when the process is gone."""
    try:
        return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
    except OSError:
        return []
