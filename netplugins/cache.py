"""On-disk cache of ADD results, so DEL runs with the ADD-time config and result even after a restart."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hostos.atomicfile import atomic_write_json

_SAFE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
CACHE_KIND = "pycriCNICacheV1"


class ResultCache:
    """One JSON file per (network, container id, interface)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _path(self, network: str, container_id: str, ifname: str) -> Path:
        for part in (network, container_id, ifname):
            if not _SAFE_RE.match(part):
                raise ValueError(f"unsafe cache key component {part!r}")
        return self.dir / f"{network}-{container_id}-{ifname}.json"

    def save(self, network: str, container_id: str, ifname: str, entry: dict[str, Any]) -> None:
        path = self._path(network, container_id, ifname)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"kind": CACHE_KIND, **entry})

    def load(self, network: str, container_id: str, ifname: str) -> dict[str, Any] | None:
        """The cached entry, or None when missing or unreadable (DEL then falls back to the current config)."""
        try:
            data = json.loads(self._path(network, container_id, ifname).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("kind") == CACHE_KIND else None

    def find(self, container_id: str, ifname: str) -> list[dict[str, Any]]:
        """Every cached entry of a container, whatever network it was attached to."""
        suffix = f"-{container_id}-{ifname}.json"
        try:
            names = [n for n in os.listdir(self.dir) if n.endswith(suffix)]
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            try:
                data = json.loads((self.dir / name).read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == CACHE_KIND:
                entries.append(data)
        return entries

    def entries(self) -> list[dict[str, Any]]:
        """Every readable entry (for the sweep at start of pods that have no record any more)."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                data = json.loads((self.dir / name).read_bytes())
            except (OSError, ValueError):
                continue
            if (isinstance(data, dict) and data.get("kind") == CACHE_KIND
                    and all(isinstance(data.get(k), str) and _SAFE_RE.match(data[k])
                            for k in ("containerId", "ifName", "networkName"))):
                found.append(data)
        return found

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self._path(network, container_id, ifname))
        except FileNotFoundError:
            pass
