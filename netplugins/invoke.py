"""Running one CNI plugin binary as the CNI spec describes: environment, stdin config, result or error on stdout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from hostos import spawn

from .errors import CNIError, CNITimeout, NetPluginError

# Capability args the runtime knows how to fill (CNI conventions document).
KNOWN_CAPABILITIES = ("portMappings", "bandwidth", "ipRanges")


class PluginNotFound(NetPluginError):
    """No plugin binary of that type in any plugin directory."""


def cni_args(namespace: str, name: str, sandbox_id: str, uid: str) -> str:
    """CNI_ARGS as kubelet's network plugins pass them; values are plain since kubelet validated them."""
    pairs = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
             ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id), ("K8S_POD_UID", uid)]
    for key, value in pairs:
        if any(c in value for c in ";=\0"):
            raise NetPluginError(f"CNI_ARGS value for {key} contains a separator: {value!r}")
    return ";".join(f"{k}={v}" for k, v in pairs)


def plugin_env(command: str, container_id: str, netns: str, ifname: str, args: str,
               plugin_dirs: Iterable[Path]) -> dict[str, str]:
    """The process environment of a plugin call; PATH is kept so plugins like portmap find iptables."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": os.pathsep.join(str(d) for d in plugin_dirs),
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    }


def plugin_stdin(name: str, cni_version: str, plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None,
                 capability_args: Mapping[str, Any]) -> bytes:
    """The config one plugin of a chain reads: its own section plus name, version, prevResult and runtimeConfig.

    Capability args go only to plugins whose `capabilities` map declares them (CNI conventions).
    """
    conf = dict(plugin)
    conf["name"] = name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    declared = plugin["capabilities"] if isinstance(plugin.get("capabilities"), dict) else {}
    runtime = {k: v for k, v in capability_args.items() if declared.get(k) is True}
    if runtime:
        existing = conf["runtimeConfig"] if isinstance(conf.get("runtimeConfig"), dict) else {}
        conf["runtimeConfig"] = {**existing, **runtime}
    return json.dumps(conf, separators=(",", ":")).encode()


def find_plugin(plugin_type: str, plugin_dirs: Iterable[Path]) -> Path:
    """The first executable named `plugin_type` in the plugin directories."""
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise PluginNotFound(f"invalid plugin type {plugin_type!r}")
    dirs = list(plugin_dirs)
    for d in dirs:
        candidate = Path(d) / plugin_type
        if os.access(candidate, os.X_OK) and candidate.is_file():
            return candidate
    raise PluginNotFound(f"failed to find plugin {plugin_type!r} in path {[str(d) for d in dirs]}")


def parse_error(plugin: str, command: str, stdout: bytes, stderr: bytes, returncode: int) -> CNIError:
    """The plugin's own error object when it printed one, else its stderr and exit status."""
    try:
        data = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict) and "code" in data:
        code = data.get("code")
        return CNIError(plugin, command, code if isinstance(code, int) else 999,
                        str(data.get("msg", "")), str(data.get("details", "")))
    detail = stderr.decode(errors="replace").strip()[-2000:] or stdout.decode(errors="replace").strip()[-2000:]
    return CNIError(plugin, command, 999, f"exit status {returncode}", detail)


async def exec_plugin(path: Path, env: Mapping[str, str], stdin: bytes, timeout: float) -> bytes:
    """Run a plugin once; its stdout on success, a CNIError (plugin's code and msg) on failure or timeout.

    Started and waited for in a thread (hostos.spawn), in a session of its own: at the timeout, or when the caller
    gives up, the plugin and whatever it started (iptables, ipam) are killed as one process group."""
    command = env.get("CNI_COMMAND", "?")
    proc = await spawn.popen([str(path)], env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    done = await spawn.communicate(proc, stdin, timeout, group=True)
    if done.timed_out:
        detail = done.stderr.decode(errors="replace").strip()[-2000:]
        raise CNITimeout(path.name, command, 999, f"timed out after {timeout:g}s", detail)
    if done.returncode != 0:
        raise parse_error(path.name, command, done.stdout, done.stderr, done.returncode)
    return done.stdout


def decode_json(plugin: str, command: str, stdout: bytes) -> dict[str, Any]:
    """A plugin's stdout as a JSON object (ADD must print its result)."""
    try:
        data = json.loads(stdout)
    except ValueError as e:
        raise CNIError(plugin, command, 999, "plugin printed invalid JSON",
                       stdout[:500].decode(errors="replace")) from e
    if not isinstance(data, dict):
        raise CNIError(plugin, command, 999, "plugin result is not a JSON object")
    return data
