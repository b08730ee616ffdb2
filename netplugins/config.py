"""CNI network configuration: loading .conf/.conflist files and watching the directory for changes.

The first valid file in lexical order is the default network, as in libcni/ocicni. Invalid files are
skipped with a logged reason so that one broken file does not hide a good one behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

CONF_EXTENSIONS = (".conf", ".conflist", ".json")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_TYPE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_MAX_CONF_BYTES = 1 << 20


class InvalidNetworkConfig(ValueError):
    """A configuration file that cannot be used; the message says why."""


@dataclass(frozen=True)
class NetworkConfig:
    """One network: a plugin chain with its name and CNI version (a single .conf becomes a one-plugin list)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The conflist form, as stored in the result cache so DEL can run with the ADD-time config."""
        return {"cniVersion": self.cni_version, "name": self.name, "disableCheck": self.disable_check,
                "plugins": list(self.plugins)}


def parse_network(data: Any, source: str = "") -> NetworkConfig:
    """Validate a decoded .conf or .conflist document; raise InvalidNetworkConfig naming the problem."""
    if not isinstance(data, dict):
        raise InvalidNetworkConfig("top level is not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidNetworkConfig(f"invalid or missing network name {name!r}")
    version = data.get("cniVersion", "0.1.0")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise InvalidNetworkConfig(f"invalid cniVersion {version!r}")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InvalidNetworkConfig("'plugins' must be a non-empty list")
    else:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise InvalidNetworkConfig(f"plugin {index} is not an object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not _TYPE_RE.match(ptype):
            raise InvalidNetworkConfig(f"plugin {index} has an invalid or missing type {ptype!r}")
    disable_check = data.get("disableCheck", False)
    if isinstance(disable_check, str):
        disable_check = disable_check.lower() == "true"
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(plugins),
                         disable_check=bool(disable_check), source=source, raw=data)


def load_file(path: Path) -> NetworkConfig:
    """Read and validate one configuration file."""
    try:
        with open(path, "rb") as f:
            content = f.read(_MAX_CONF_BYTES + 1)
    except OSError as e:
        raise InvalidNetworkConfig(f"cannot read: {e.strerror}") from e
    if len(content) > _MAX_CONF_BYTES:
        raise InvalidNetworkConfig("file larger than 1 MiB")
    try:
        data = json.loads(content)
    except ValueError as e:
        raise InvalidNetworkConfig(f"not valid JSON: {e}") from e
    return parse_network(data, str(path))


def config_files(conf_dir: Path) -> list[Path]:
    """Configuration files in lexical order; a missing directory has none."""
    try:
        names = sorted(e.name for e in os.scandir(conf_dir) if e.name.endswith(CONF_EXTENSIONS) and e.is_file())
    except FileNotFoundError:
        return []
    return [conf_dir / n for n in names]


def load_networks(conf_dir: Path) -> list[NetworkConfig]:
    """Every valid network in lexical file order; invalid files are logged and skipped."""
    networks = []
    for path in config_files(conf_dir):
        try:
            networks.append(load_file(path))
        except InvalidNetworkConfig as e:
            log.warning("skipping CNI config %s: %s", path, e)
    return networks


def _dir_signature(conf_dir: Path) -> tuple[Any, ...]:
    """A cheap fingerprint of the directory: names, sizes and mtimes of candidate files."""
    try:
        entries = [(e.name, e.stat().st_mtime_ns, e.stat().st_size)
                   for e in os.scandir(conf_dir) if e.name.endswith(CONF_EXTENSIONS)]
    except FileNotFoundError:
        return ()
    return tuple(sorted(entries))


class ConfigWatcher:
    """Polls the conf dir once per interval (a scandir, no file reads) and reloads when it changed.

    Polling rather than inotify: it also sees a directory created after start and costs microseconds.
    """

    def __init__(self, conf_dir: Path, on_change: Callable[[list[NetworkConfig]], None], interval: float = 1.0):
        self._dir = Path(conf_dir)
        self._on_change = on_change
        self._interval = interval
        self._signature: tuple[Any, ...] | None = None
        self._task: asyncio.Task[Any] | None = None

    def poll(self) -> bool:
        """Reload if the directory changed since the last poll; True when it did."""
        signature = _dir_signature(self._dir)
        if signature == self._signature:
            return False
        self._signature = signature
        self._on_change(load_networks(self._dir))
        return True

    def reread(self, conf_dir: Path | None = None) -> None:
        """Read the directory (or a new one) now, even when it looks unchanged (SIGHUP)."""
        if conf_dir is not None:
            self._dir = Path(conf_dir)
        self._signature = None
        self.poll()

    def start(self) -> None:
        self.poll()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cni-config-watcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.poll()
            except Exception:  # a transient scandir error must not kill the watcher
                log.exception("CNI config poll failed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
