"""CNIManager: the pod network lifecycle (ADD through a chain, DEL from the cache, CHECK) over the default network."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .cache import ResultCache
from .config import ConfigWatcher, InvalidNetworkConfig, NetworkConfig, parse_network
from .errors import CNIError, NetPluginError, NetworkNotReady
from .invoke import PluginNotFound, cni_args, decode_json, exec_plugin, find_plugin, plugin_env, plugin_stdin
from .netns import namespace_alive
from .result import InvalidResult, NetworkResult, parse_result

log = logging.getLogger(__name__)

DEFAULT_IFNAME = "eth0"


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"      # tcp, udp or sctp
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"hostPort": self.host_port, "containerPort": self.container_port,
                                 "protocol": self.protocol}
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry


@dataclass(frozen=True)
class PodNetwork:
    """What the network layer needs to know about a pod."""

    id: str
    name: str
    namespace: str
    uid: str
    netns: str
    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: dict[str, int] | None = None
    pod_cidr: str | None = None
    ifname: str = DEFAULT_IFNAME


def capability_args(pod: PodNetwork) -> dict[str, Any]:
    """runtimeConfig values by capability name; only non-empty ones are offered to plugins."""
    args: dict[str, Any] = {}
    if pod.port_mappings:
        args["portMappings"] = [p.to_cni() for p in pod.port_mappings if p.host_port > 0]
        if not args["portMappings"]:
            del args["portMappings"]
    if pod.bandwidth:
        args["bandwidth"] = dict(pod.bandwidth)
    if pod.pod_cidr:
        args["ipRanges"] = [[{"subnet": cidr.strip()}] for cidr in pod.pod_cidr.split(",") if cidr.strip()]
    return args


def _version_at_least(version: str, minimum: tuple[int, int, int]) -> bool:
    try:
        return tuple(int(x) for x in version.split(".")) >= minimum
    except ValueError:
        return False


class CNIManager:
    """Runs the default network's plugin chain for pods and remembers every ADD on disk."""

    def __init__(self, conf_dir: Path, plugin_dirs: Iterable[Path], cache_dir: Path, timeout: float = 60.0,
                 poll_interval: float = 1.0) -> None:
        self.conf_dir = Path(conf_dir)
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.cache = ResultCache(Path(cache_dir))
        self.timeout = timeout
        self._networks: list[NetworkConfig] = []
        self._watcher = ConfigWatcher(self.conf_dir, self._on_change, poll_interval)

    def _on_change(self, networks: list[NetworkConfig]) -> None:
        before = self.default_network()
        self._networks = networks
        after = self.default_network()
        if before != after:
            log.info("default CNI network is now %s", f"{after.name} ({after.source})" if after else "none")

    async def start(self) -> None:
        """Load the configuration and keep watching the directory."""
        self._watcher.start()

    async def stop(self) -> None:
        """Stop watching the conf dir (pod networks outlive the daemon)."""
        await self._watcher.stop()

    def reload(self) -> None:
        """Re-read the directory now (the watcher does this by itself every interval)."""
        self._watcher.poll()

    def reconfigure(self, conf_dir: Path, plugin_dirs: Iterable[Path], timeout: float) -> None:
        """New settings from a configuration reload; the conf dir is read again at once. Pods already
        networked keep their networks: their teardown uses the result cached at setup."""
        self.conf_dir = Path(conf_dir)
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.timeout = timeout
        self._watcher.reread(self.conf_dir)

    def default_network(self) -> NetworkConfig | None:
        return self._networks[0] if self._networks else None

    def ready(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the NetworkReady runtime condition."""
        if self.default_network() is None:
            return False, "NetworkPluginNotReady", f"no valid CNI network config found in {self.conf_dir}"
        return True, "", ""

    def _require_network(self) -> NetworkConfig:
        network = self.default_network()
        if network is None:
            self.reload()
            network = self.default_network()
        if network is None:
            raise NetworkNotReady(f"network plugin not ready: no valid CNI network config in {self.conf_dir}")
        return network

    async def _run_chain(self, network: NetworkConfig, command: str, pod: PodNetwork, netns: str,
                         caps: dict[str, Any], prev_result: dict[str, Any] | None) -> dict[str, Any] | None:
        """ADD/CHECK stop at the first failing plugin; DEL runs every plugin (reverse order) and then raises
        the first error, so one broken plugin cannot keep the others from releasing what they hold."""
        if command == "DEL":
            await self._del_chain(network, pod, netns, caps, prev_result)
            return None
        args = cni_args(pod.namespace, pod.name, pod.id, pod.uid)
        env = plugin_env(command, pod.id, netns, pod.ifname, args, self.plugin_dirs)
        for plugin in network.plugins:
            binary = find_plugin(plugin["type"], self.plugin_dirs)
            stdin = plugin_stdin(network.name, network.cni_version, plugin, prev_result, caps)
            stdout = await exec_plugin(binary, env, stdin, self.timeout)
            if command == "ADD":
                prev_result = decode_json(binary.name, command, stdout)
        return prev_result

    async def _del_chain(self, network: NetworkConfig, pod: PodNetwork, netns: str, caps: dict[str, Any],
                         prev_result: dict[str, Any] | None) -> None:
        args = cni_args(pod.namespace, pod.name, pod.id, pod.uid)
        env = plugin_env("DEL", pod.id, netns, pod.ifname, args, self.plugin_dirs)
        first_error: Exception | None = None
        for plugin in reversed(network.plugins):
            try:
                binary = find_plugin(plugin["type"], self.plugin_dirs)
            except PluginNotFound as e:
                # A plugin that is not installed holds nothing to release; failing here would block Stop forever.
                log.warning("skipping DEL of %s for %s: %s", plugin["type"], pod.id[:12], e)
                continue
            stdin = plugin_stdin(network.name, network.cni_version, plugin, prev_result, caps)
            try:
                await exec_plugin(binary, env, stdin, self.timeout)
            except NetPluginError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return None

    async def setup(self, pod: PodNetwork) -> NetworkResult:
        """ADD the pod to the default network; on failure everything the chain did is DELeted again."""
        network = self._require_network()
        caps = capability_args(pod)
        started = time.monotonic()
        try:
            raw = await self._run_chain(network, "ADD", pod, pod.netns, caps, None)
            result = parse_result(raw or {}, network.cni_version)
        except (NetPluginError, InvalidResult, OSError) as e:
            try:
                await self._run_chain(network, "DEL", pod, pod.netns, caps, None)
            except (NetPluginError, OSError) as cleanup_error:
                log.warning("DEL after failed ADD of %s also failed: %s", pod.id, cleanup_error)
            if isinstance(e, InvalidResult):
                raise CNIError(network.plugins[-1]["type"], "ADD", 999, f"invalid result: {e}") from e
            if isinstance(e, OSError):
                raise NetPluginError(f"running CNI plugins of network {network.name}: {e}") from e
            raise
        try:
            await asyncio.to_thread(self.cache.save, network.name, pod.id, pod.ifname, {
                "containerId": pod.id, "ifName": pod.ifname, "networkName": network.name, "netns": pod.netns,
                "config": network.to_dict(), "pod": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "capabilityArgs": caps, "result": raw})
        except BaseException:
            await self._run_chain(network, "DEL", pod, pod.netns, caps, None)
            raise
        log.debug("CNI ADD %s on %s took %.1f ms", pod.id[:12], network.name, (time.monotonic() - started) * 1e3)
        return result

    async def teardown(self, pod: PodNetwork) -> None:
        """DEL the pod from every network it was added to (per the cache), else from the default network.

        Idempotent: DEL of a pod never added, or whose netns is gone, succeeds (the path is then passed empty).
        """
        netns = pod.netns if pod.netns and namespace_alive(pod.netns) else ""
        entries = await asyncio.to_thread(self.cache.find, pod.id, pod.ifname)
        if not entries:
            network = self.default_network()
            if network is None:
                return  # never added (no network existed) and nothing cached: nothing to undo
            await self._run_chain(network, "DEL", pod, netns, capability_args(pod), None)
            return
        for entry in entries:
            try:
                network = parse_network(entry.get("config"), "cache")
            except InvalidNetworkConfig as e:
                log.warning("unusable cached CNI config for %s: %s", pod.id, e)
                network = self._require_network()
            prev = entry.get("result") if _version_at_least(network.cni_version, (0, 4, 0)) else None
            await self._run_chain(network, "DEL", pod, netns, entry.get("capabilityArgs") or {}, prev)
            await asyncio.to_thread(self.cache.delete, network.name, pod.id, pod.ifname)

    def cached_pods(self) -> list[PodNetwork]:
        """Every pod with a cached ADD result, as teardown() needs it (netns as at ADD time, no port mappings:
        DEL takes those from the cache)."""
        pods = {}
        for entry in self.cache.entries():
            meta = entry["pod"] if isinstance(entry.get("pod"), dict) else {}
            pod = PodNetwork(id=entry["containerId"], name=str(meta.get("name", "")),
                             namespace=str(meta.get("namespace", "")), uid=str(meta.get("uid", "")),
                             netns=str(entry.get("netns") or ""), ifname=entry["ifName"])
            pods[(pod.id, pod.ifname)] = pod  # one pod on several networks: teardown DELs them all
        return list(pods.values())

    async def check(self, pod: PodNetwork) -> None:
        """CHECK the pod's attachment with its cached result (CNI 0.4.0+; skipped when the network disables it)."""
        entries = await asyncio.to_thread(self.cache.find, pod.id, pod.ifname)
        if not entries:
            raise NetPluginError(f"no cached CNI result for {pod.id}")
        for entry in entries:
            network = parse_network(entry.get("config"), "cache")
            if network.disable_check or not _version_at_least(network.cni_version, (0, 4, 0)):
                continue
            await self._run_chain(network, "CHECK", pod, pod.netns, entry.get("capabilityArgs") or {},
                                  entry.get("result"))

    def cached_result(self, pod_id: str, ifname: str = DEFAULT_IFNAME) -> NetworkResult | None:
        """The ADD result remembered for a pod (used to answer status after a restart)."""
        for entry in self.cache.find(pod_id, ifname):
            try:
                return parse_result(entry.get("result") or {}, (entry.get("config") or {}).get("cniVersion"))
            except InvalidResult:
                return None
        return None
