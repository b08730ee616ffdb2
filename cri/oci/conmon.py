"""conmon 2.1.6 as the per-container monitor, driven the way CRI-O drives it.

conmon runs ``<runtime> create`` itself, holds the container's stdio (CRI log file, attach socket, ctl fifo),
and writes ``<exit_dir>/<id>`` with the exit status when the container ends. It double-forks, so containers keep
running while the daemon is down; with the daemon a child subreaper (see ``reaper``) the detached conmon is
re-parented to us, and we reap it when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostos import spawn
from hostos.cgroups.driver import CgroupfsDriver
from cri.oci.reaper import pidfd_ended
from cri.oci.runtime import OCIRuntime, OCIRuntimeError

CREATE_TIMEOUT = 60.0


class ConmonError(OCIRuntimeError):
    """conmon or the runtime it ran failed to create the container."""


@dataclass(frozen=True)
class BundlePaths:
    """Files conmon and the runtime keep in a container's bundle directory."""

    bundle: Path

    @property
    def config(self) -> Path:
        return self.bundle / "config.json"

    @property
    def pid_file(self) -> Path:
        return self.bundle / "pidfile"

    @property
    def conmon_pid_file(self) -> Path:
        return self.bundle / "conmon-pidfile"

    @property
    def attach_socket(self) -> Path:
        return self.bundle / "attach"

    @property
    def ctl_fifo(self) -> Path:
        return self.bundle / "ctl"

    @property
    def oom_file(self) -> Path:
        return self.bundle / "oom"

    @property
    def runtime_log(self) -> Path:
        """The runtime's own messages at create (JSON lines): kept out of the container's stderr, its log."""
        return self.bundle / "runtime.log"


@dataclass(frozen=True)
class Created:
    pid: int
    conmon_pid: int
    monitor_ready: float = 0.0  # time.time() when conmon, started and placed, was told to run `runtime create`


class Conmon:
    def __init__(self, path: str, exit_dir: Path | str, cgroup_driver: CgroupfsDriver | None = None,
                 log_level: str = "error", no_sync_log: bool = True):
        self.path = path
        self.cgroups = cgroup_driver or CgroupfsDriver()
        self.exit_dir = Path(exit_dir)
        self.log_level = log_level
        self.no_sync_log = no_sync_log

    def exit_file(self, container_id: str) -> Path:
        return self.exit_dir / container_id

    async def create_container(self, runtime: OCIRuntime, container_id: str, bundle: Path, log_path: str,
                               name: str, stdin: bool = False, stdin_once: bool = False, tty: bool = False,
                               log_size_max: int = -1, timeout: float = CREATE_TIMEOUT, cgroup: str = "",
                               restore: Path | None = None, runtime_options: Sequence[str] = ()) -> Created:
        """Start conmon, which runs ``runtime create``; return the container's init pid once it exists.

        conmon waits for the start pipe before it forks: that is when it is moved to ``cgroup`` (if given), so
        that neither it nor its children stay in the daemon's cgroup and die with the daemon's pod.

        With ``restore`` (a directory of CRIU images) conmon runs ``runtime restore --detach --image-path restore
        --work-path bundle`` plus ``runtime_options`` instead: the container is running when the pid comes.
        """
        paths = BundlePaths(bundle)
        self.exit_file(container_id).unlink(missing_ok=True)  # a stale exit file would mark the new one exited
        for stale in (paths.oom_file, paths.pid_file, paths.conmon_pid_file, paths.runtime_log):
            stale.unlink(missing_ok=True)
        args = [
            self.path, "--api-version", "1", "-c", container_id, "-u", container_id, "-n", name,
            "-r", runtime.path, "-b", str(bundle), "-p", str(paths.pid_file), "-P", str(paths.conmon_pid_file),
            "--exit-dir", str(self.exit_dir), "--socket-dir-path", str(bundle.parent), "--full-attach",
            "-l", f"k8s-file:{log_path}" if log_path else "none", "--log-level", self.log_level,
        ]
        # The runtime runs with the container's stdio: what it logs itself (runc's warnings under systemd) would
        # be the first lines of the container's log. Its --log takes them; errors still reach stderr too.
        for arg in [*runtime.global_args, "--log", str(paths.runtime_log), "--log-format", "json"]:
            args += ["--runtime-arg", arg]
        args += self.cgroups.conmon_args
        if log_size_max > 0:
            args += ["--log-size-max", str(log_size_max)]
        if self.no_sync_log:
            args.append("--no-sync-log")
        if stdin:
            args.append("-i")
            if not stdin_once:
                args.append("--leave-stdin-open")
        if tty:
            args.append("-t")
        if restore is not None:
            args += ["--restore", str(restore)]
        for option in runtime_options:
            args += ["--runtime-opt", option]
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "_OCI_SYNCPIPE": str(sync_w), "_OCI_STARTPIPE": str(start_r)}
        try:  # in a thread of conmon's own spawner pool: off the event loop, and never behind a CNI plugin
            proc = await spawn.popen(args, spawn.MONITORS, cwd=str(bundle), env=env, pass_fds=(sync_w, start_r),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        except BaseException:
            for fd in (sync_r, sync_w, start_r, start_w):
                os.close(fd)
            raise
        os.close(sync_w)
        os.close(start_r)
        try:
            if cgroup:  # cgroupfs: a dozen mkdirs and writes in a thread; systemd: a transient scope
                await self.cgroups.place(proc.pid, cgroup, f"pycri conmon of container {container_id}")
            os.write(start_w, b"0")
            monitor_ready = time.time()
        except OSError as e:  # the cgroup, or conmon died before its start
            os.close(sync_r)
            spawn.kill(proc)
            await spawn.wait(proc, spawn.MONITORS)
            raise ConmonError(f"starting conmon (cgroup {cgroup or 'inherited'}): {e}") from e
        finally:
            os.close(start_w)
        try:
            message = await _sync_message(sync_r, timeout)
        except asyncio.TimeoutError:
            await _reap_detached(_read_pid(paths.conmon_pid_file), grace=0)  # killed: its create is abandoned
            raise ConmonError(f"conmon did not report the container pid within {timeout}s") from None
        finally:
            os.close(sync_r)
            stderr = await _finish(proc)
        pid = _reported_pid(message)
        if pid <= 0:
            # The detached conmon ends after reporting; re-parented to the daemon, it is ours to reap (nobody
            # watches a monitor whose container never existed) or it would stay a zombie.
            await _reap_detached(_read_pid(paths.conmon_pid_file))
            detail = (runtime_errors(paths.runtime_log) or (message or {}).get("message") or stderr
                      or "conmon exited without reporting a pid")
            action = "restore" if restore is not None else "create"
            raise ConmonError(f"{runtime.name} {action} failed: {detail.strip()}", detail)
        return Created(pid=pid, conmon_pid=_read_pid(paths.conmon_pid_file), monitor_ready=monitor_ready)

    @staticmethod
    def reopen_log(bundle: Path) -> None:
        """Ask conmon to reopen the log file (after kubelet rotated it)."""
        _write_ctl(BundlePaths(bundle).ctl_fifo, "2 0 0\n")

    @staticmethod
    def resize(bundle: Path, height: int, width: int) -> None:
        _write_ctl(BundlePaths(bundle).ctl_fifo, f"1 {int(height)} {int(width)}\n")


def runtime_errors(path: Path, last: int = 3) -> str:
    """The last error messages in a runtime's JSON log ("" when none): what to tell the user when a create failed.
    runc writes one record a line; crun's last record may lack its newline, so records are decoded one by one."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    decoder, found, at = json.JSONDecoder(), [], 0
    while True:
        at = len(text) - len(text[at:].lstrip())
        if at >= len(text):
            break
        try:
            record, at = decoder.raw_decode(text, at)
        except ValueError:
            break  # a torn record (the runtime killed mid-write): what came before stands
        if isinstance(record, dict) and record.get("level") in ("error", "fatal", "panic") and record.get("msg"):
            message = str(record["msg"]).strip()
            if message not in found:
                found.append(message)
    return "; ".join(found[-last:])


def _write_ctl(fifo: Path, line: str) -> None:
    # O_NONBLOCK: a dead conmon has no reader and must not hang the caller.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConmonError(f"conmon control fifo {fifo} is not open: {err}") from err
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _reported_pid(message: dict[str, Any] | None) -> int:
    """conmon 2.x names the field "data" (older releases "pid"); negative means the runtime failed."""
    if not message:
        return -1
    value = message.get("data", message.get("pid", -1))
    return value if isinstance(value, int) else -1


async def _sync_message(fd: int, timeout: float) -> dict[str, Any] | None:
    """First JSON line conmon writes on the sync pipe: {"data": pid} or {"data": -1, "message": "..."}; None when
    it closed the pipe without one. The loop reads the pipe when it has data: no thread is held for the runtime's
    create (the default executor has six on this 2-core host, and a wave of creates queued behind them)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or b"\n" in buf) and not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ended, timeout)
    finally:
        loop.remove_reader(fd)
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        return None
    try:
        message: dict[str, Any] = json.loads(line)
        return message
    except ValueError:
        return {"data": -1, "message": line.decode(errors="replace")}


async def _finish(proc: subprocess.Popen[bytes]) -> str:
    """conmon's first process exits right after its fork; reap it (killed after 10 s) and return what it said on
    stderr."""
    done = await spawn.communicate(proc, timeout=10, pool=spawn.MONITORS)
    return done.stderr.decode(errors="replace").strip()


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


async def _reap_detached(pid: int, grace: float = 5.0) -> None:
    """Wait for a conmon that failed to create its container to exit (killed after ``grace``), and reap it when
    it is our child."""
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone already (and reaped by its parent)
    try:
        if not await pidfd_ended(fd, grace):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            await pidfd_ended(fd, 5.0)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass  # not the daemon's child (no subreaper): init reaps it
    finally:
        os.close(fd)
