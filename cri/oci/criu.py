"""Whether containers can be checkpointed here: CRIU must pass `criu check` on this kernel, and the runtime handler
must drive it (runc runs the criu binary; crun only when built with libcriu, `+CRIU` in `crun --version`).

Each answer is probed once per binary (path, inode, mtime) and names what is missing, for FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

PROBE_TIMEOUT = 30.0
_answers: dict[tuple[Any, ...], str | None] = {}


async def _run(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout and stderr) of a short probe; 127 when it cannot start, -1 when it hangs."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return 127, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{' '.join(argv)} did not finish in {PROBE_TIMEOUT:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace")


async def _once(kind: str, path: str, probe: Callable[[str], Awaitable[str | None]]) -> str | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    key = (kind, path, st.st_ino, st.st_mtime_ns)
    if key not in _answers:
        _answers[key] = await probe(path)
    return _answers[key]


def check_failure(output: str, release: str) -> str:
    """The reason a failed `criu check` gives: its first error line (they name the missing kernel feature)."""
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")]
    reason = errors[0] if errors else (output.strip().splitlines() or ["no output"])[-1]
    return f"`criu check` fails on this host (kernel {release}): {reason}"


async def _probe_criu(path: str) -> str | None:
    code, out = await _run([path, "check"])
    return None if code == 0 else check_failure(out, os.uname().release)


async def criu_problem(criu: str = "criu") -> str | None:
    """Why CRIU cannot checkpoint on this host, or None."""
    path = shutil.which(criu)
    if path is None:
        return f"CRIU ({criu}) is not installed (Debian: apt-get install criu)"
    return await _once("criu", path, _probe_criu)


def runtime_failure(handler: str, path: str, version_text: str) -> str | None:
    """Why this runtime cannot checkpoint, from its `--version`: crun without libcriu cannot."""
    first = version_text.strip().splitlines()[0] if version_text.strip() else ""
    if first.startswith("crun") and "+CRIU" not in version_text:
        return (f"runtime handler {handler!r} ({path}, {first}) is built without CRIU support (no +CRIU in "
                f"`crun --version`); checkpoint containers of a runc pod")
    return None


async def runtime_problem(handler: str, path: str) -> str | None:
    """Why the handler's runtime cannot checkpoint, or None."""
    async def probe(p: str) -> str | None:
        code, out = await _run([p, "--version"])
        return runtime_failure(handler, p, out) if code == 0 else f"{p} --version failed: {out.strip()[:200]}"
    return await _once(f"runtime:{handler}", path, probe)
