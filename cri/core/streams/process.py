"""The OCI process an exec runs, made from the container's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cri.errors import Internal
from cri.oci.conmon import BundlePaths


def container_process(bundle: Path) -> dict[str, Any]:
    """The container's own OCI process, from its bundle's config.json: what every exec starts from."""
    try:
        process: dict[str, Any] = json.loads(BundlePaths(bundle).config.read_text())["process"]
        return process
    except (OSError, ValueError, KeyError) as e:
        raise Internal(f"reading the container's process from {bundle}: {e}") from e


def exec_process(container_process: dict[str, Any], cmd: list[str], tty: bool) -> dict[str, Any]:
    """The OCI process an exec runs: the container's own (user, groups, capabilities, cwd, env, limits), with
    cmd as its args, and for a terminal TERM=xterm as CRI-O sets it.

    Passed whole as --process so that runc and crun agree: their exec flags differ (crun's --env replaces the
    environment, its exec takes no user from the spec)."""
    process = {**container_process, "args": list(cmd), "terminal": tty}
    process.pop("consoleSize", None)
    process.pop("oomScoreAdj", None)  # the container's score was set at its creation; lowering needs a capability
    env = list(process.get("env", []))
    if tty and not any(item.startswith("TERM=") for item in env):
        env.append("TERM=xterm")
    process["env"] = env
    return process
