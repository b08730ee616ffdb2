"""One typed async wrapper around an OCI runtime binary (runc or crun)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostos import spawn

from cri.oci.execpipes import Orphan, OutputPipes, reap_failed_starts

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
EXEC_OUTPUT_CAP = (16 << 20) - (16 << 10)  # stdout + stderr, so the reply fits gRPC's 16 MiB message limit


class OCIRuntimeError(Exception):
    """The runtime binary failed; the message carries the command and its stderr."""

    def __init__(self, message: str, stderr: str = "", returncode: int | None = None):
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


class ContainerMissing(OCIRuntimeError):
    """The runtime does not know the container (never created, or already deleted)."""


class RuntimeTimeout(OCIRuntimeError):
    """The runtime did not answer in time; it was killed."""


# Threads that run the runtime's short commands (create, start, kill, delete, state, list): as many as may run
# at once when a node starts or stops 50 pods; a thread waits, it does not compute.
_SPAWNER_SIZE = 32
_SPAWNER = ThreadPoolExecutor(_SPAWNER_SIZE, thread_name_prefix="runtime")


def prestart() -> None:
    """Start the spawner's threads now (hostos.spawn.prestart says why)."""
    spawn.prestart(_SPAWNER, _SPAWNER_SIZE)

_MISSING_MARKERS = ("does not exist", "not found", "no such file or directory", "container not running")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


# After the command ends, how long its pipes may stay open (held by a background child) when the caller set no
# deadline, before whoever holds them is killed.
_PIPE_GRACE = 2.0
# How long the processes killed for holding them may take to die (a loaded host runs their exit late): the answer
# waits for it, so that nothing the command started is left when ExecSync returns.
_HOLDERS_KILL_WAIT = 10.0


class OCIRuntime:
    """runc/crun with its own state root; every call has a timeout and puts the tool's stderr into its error."""

    def __init__(self, name: str, path: str, root: Path | str, timeout: float = DEFAULT_TIMEOUT,
                 extra_args: tuple[str, ...] = ()):
        self.name = name
        self.path = path
        self.root = Path(root)
        self.timeout = timeout
        self.extra_args = extra_args

    @property
    def global_args(self) -> list[str]:
        return ["--root", str(self.root), *self.extra_args]

    async def _run(self, *args: str, stdin: bytes | None = None, timeout: float | None = None) -> bytes:
        """Run the binary to its end in one of the spawner's threads: the fork and exec (the loop waited for the
        child's exec under vfork, 14 % of its time in a 20-pod wave on this loaded host) and the pipes' reads
        stay off the event loop. Killed at the timeout."""
        cmd = [self.path, *self.global_args, *args]
        limit = timeout or self.timeout

        def run() -> subprocess.CompletedProcess[bytes]:
            if stdin is not None:
                return subprocess.run(cmd, input=stdin, capture_output=True, timeout=limit)
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit)

        try:
            proc = await asyncio.get_running_loop().run_in_executor(_SPAWNER, run)
        except subprocess.TimeoutExpired:
            raise RuntimeTimeout(f"{self.name} {args[0]} timed out after {limit}s") from None
        out, err = proc.stdout, proc.stderr
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            message = f"{self.name} {' '.join(args[:1])} {args[-1] if len(args) > 1 else ''}: {text}".strip()
            cls = ContainerMissing if any(m in text.lower() for m in _MISSING_MARKERS) else OCIRuntimeError
            raise cls(message, text, proc.returncode)
        return out

    async def state(self, container_id: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(await self._run("state", container_id))
        return state

    async def list(self) -> list[dict[str, Any]]:
        """Every container under our root ({"id", "pid", "status", "bundle", ...}); empty when the root is gone."""
        return json.loads(await self._run("list", "--format", "json") or b"null") or []

    async def start(self, container_id: str) -> None:
        await self._run("start", container_id)

    async def kill(self, container_id: str, sig: int = signal.SIGTERM, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, str(int(sig))]
        await self._run(*args)

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Delete; a container the runtime no longer knows counts as deleted."""
        try:
            await self._run("delete", *(["--force"] if force else []), container_id)
        except ContainerMissing:
            pass

    async def checkpoint(self, container_id: str, image_path: Path, work_path: Path, timeout: float) -> None:
        """CRIU images of the running container into `image_path`; it keeps running (a forensic checkpoint)."""
        await self._run("checkpoint", "--image-path", str(image_path), "--work-path", str(work_path),
                        "--leave-running", "--file-locks", container_id, timeout=timeout)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        await self._run("update", "--resources", "-", container_id, stdin=json.dumps(resources).encode())

    async def exec_sync(self, container_id: str, process: dict[str, Any], timeout: float | None, pid_file: Path,
                        output_cap: int = EXEC_OUTPUT_CAP) -> ExecResult:
        """Run the OCI ``process`` in the container and collect its output (capped) until ``timeout``.

        The process goes whole through --process (written beside ``pid_file``): crun's exec takes no user or
        groups from the container's spec. The runtime detaches (see ``execpipes``). When the deadline passes
        first, the process is killed and the result says timed out; when it ended in time its exit code stands,
        with what it wrote by the deadline (or a short grace without one). Either way, processes it left behind
        that still hold its output are killed then, so nothing outlives the call through them.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout and timeout > 0 else None
        process_file = pid_file.with_suffix(".json")
        process_file.write_text(json.dumps(process))
        cmd = [self.path, *self.global_args, "exec", "--detach", "--process", str(process_file),
               "--pid-file", str(pid_file), container_id]
        pipes = OutputPipes(output_cap)
        command: Orphan | None = None
        timed_out = False
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=pipes.out_w,
                                                        stderr=pipes.err_w)
            pipes.start()
            try:
                code = await asyncio.wait_for(proc.wait(), self.timeout)  # it returns once the command runs
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                _kill_from_pid_file(pid_file)
                raise RuntimeTimeout(f"{self.name} exec did not start the command within {self.timeout}s") from None
            if code == 0:
                command = _orphan(pid_file)
                try:
                    code = await asyncio.wait_for(command.wait(), _remaining(loop, deadline))
                except asyncio.TimeoutError:
                    timed_out = True
                    await command.kill_and_reap()
                    code = 128 + signal.SIGKILL
            else:  # the runtime could not start it (its message is on our stderr pipe); crun leaves the failed
                # process to us, unreaped it would keep a pod's PID namespace from ending
                await reap_failed_starts(os.path.basename(self.path))
            grace = _PIPE_GRACE if deadline is None or timed_out else max(deadline - loop.time(), 0)
            if not await pipes.closed(grace):
                await pipes.kill_holders()
                if not await pipes.closed(_HOLDERS_KILL_WAIT):
                    log.warning("%s exec in %s: what held the output still runs %gs after SIGKILL", self.name,
                                container_id, _HOLDERS_KILL_WAIT)
        finally:
            pipes.close()
            if command is not None:
                await command.kill_and_reap()
            pid_file.unlink(missing_ok=True)
            process_file.unlink(missing_ok=True)
        return ExecResult(code if code >= 0 else 128 - code, bytes(pipes.stdout), bytes(pipes.stderr), timed_out)


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - loop.time(), 0)


def _orphan(pid_file: Path) -> Orphan:
    """The detached command, re-parented to the daemon; ours to wait for and reap."""
    try:
        return Orphan(int(pid_file.read_text().strip()))
    except (OSError, ValueError) as e:
        raise OCIRuntimeError(f"the exec'd process could not be watched ({pid_file}): {e}") from e


def _kill_from_pid_file(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return  # runc has not started the process yet: killing runc below covers it
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
