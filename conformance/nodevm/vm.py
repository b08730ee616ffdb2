"""Boot the node VM under qemu for one job, one VM per machine at a time.

The host side of a run: take the machine-wide lock, write the job (command, environment, shares)
into a fresh run directory, boot qemu with that directory as the writable 9p share `job`, stream
the output file the guest agent writes there, and return the exit status it leaves. qemu gets no
network device (`-nic none`), its disk is a snapshot (writes are discarded at exit), and the
shares are plain 9p exports of host directories, read-only except the run directory: the host's
cgroups, mounts and network are never touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conformance.nodevm import CACHE, DEFAULT_CACHE
from conformance.nodevm.image import MOUNT_DIR, Image

LOCK = DEFAULT_CACHE / "vm.lock"
KEEP_RUNS = 8
KERNEL_CMDLINE = (
    "root=/dev/vda rw console=ttyS0,115200 apparmor=1 security=apparmor "
    "systemd.unified_cgroup_hierarchy=1 panic=-1 loglevel=4 net.ifnames=0"
)
EXIT_TIMEOUT, EXIT_NO_STATUS = 124, 125
# From qemu's start to the guest agent's first line: 35-55 s quiet, 3 min at a load of 10.
BOOT_TIMEOUT_S = 600
# Stopped from the host: how long the guest's command may take to finish after its SIGINT (guest.py waits
# 120 s, then kills it; the agent then saves the journal and powers off).
INTERRUPT_WAIT_S = 180
GUEST_AGENT = Path(__file__).with_name("guest.py")


@dataclass(frozen=True)
class Share:
    """A host directory exported to the guest at MOUNT_DIR/tag."""

    tag: str
    path: Path
    readonly: bool = True

    def qemu_arg(self) -> str:
        arg = f"local,path={self.path},mount_tag={self.tag},security_model=none,multidevs=remap"
        return arg + (",readonly=on" if self.readonly else "")


@dataclass
class Job:
    """What the guest agent does: mount the shares, optionally install pycri, run the command."""

    command: list[str]
    shares: list[Share] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    install: bool = True
    timeout_s: float = 3600.0

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "env": self.env,
            "install": self.install,
            "shares": {s.tag: f"{MOUNT_DIR}/{s.tag}" for s in self.shares},
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Machine:
    """Multi-threaded TCG: nested KVM on these machines did not even boot the kernel in 10 minutes."""

    cpus: int = 2
    memory_mb: int = 3072


@contextmanager
def machine_lock(log=print, lock: Path = LOCK):
    """Hold the machine-wide VM lock (flock) for the duration; wait when another VM holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
            log(f"nodevm: waiting for the VM lock {lock} (held by: {holder or 'unknown'})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}: {' '.join(sys.argv)}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def qemu_command(image: Image, run_dir: Path, shares: list[Share], machine: Machine) -> list[str]:
    cmd = [
        "qemu-system-x86_64", "-name", "pycri-node", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(machine.cpus), "-m", str(machine.memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", KERNEL_CMDLINE,
        "-drive", f"file={image.disk},format=raw,if=virtio,snapshot=on,cache=unsafe",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{run_dir / 'console.log'}",
    ]
    for share in [Share("job", run_dir, readonly=False), *shares]:
        cmd += ["-virtfs", share.qemu_arg()]
    return cmd


def new_run_dir(cache: Path = CACHE) -> Path:
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    run_dir = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (run_dir / "out").mkdir(parents=True)
    return run_dir


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def boot(image: Image, job: Job, machine: Machine = Machine(), out=sys.stdout.buffer, log=print,
         cache: Path = CACHE) -> int:
    """Run `job` in a fresh VM and return its exit status (124: timed out, 125: no status came back).

    The caller holds machine_lock. The guest's output is copied to `out` as it is written."""
    run_dir = new_run_dir(cache)
    shutil.copyfile(GUEST_AGENT, run_dir / "guest.py")
    (run_dir / "job.json").write_text(json.dumps(job.to_json(), indent=2))
    output, status = run_dir / "output.log", run_dir / "status"
    output.touch()
    cmd = qemu_command(image, run_dir, job.shares, machine)
    log(f"nodevm: booting (TCG, {machine.cpus} cpus, {machine.memory_mb} MB); run dir {run_dir}")
    started = time.monotonic()
    # Boot and install come on top of the command's own time limit, which the guest enforces.
    deadline = started + job.timeout_s + BOOT_TIMEOUT_S + 300
    booted = False
    with open(run_dir / "qemu.log", "wb") as qemu_log, open(output, "rb") as reader:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                booted = _copy(reader, out) or booted
                if not booted and time.monotonic() > started + BOOT_TIMEOUT_S:
                    log(f"nodevm: the guest agent did not start within {BOOT_TIMEOUT_S} s of boot")
                    break
                time.sleep(0.5)
        except BaseException:  # ^C, SIGTERM, the lane's budget: let the command end and say what it did
            if proc.poll() is None and booted:
                (run_dir / "interrupt").touch()
                log(f"nodevm: stopping: the guest's command gets SIGINT and up to {INTERRUPT_WAIT_S} s")
                until = time.monotonic() + INTERRUPT_WAIT_S
                while proc.poll() is None and time.monotonic() < until:
                    _copy(reader, out)
                    time.sleep(0.5)
            raise
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                timed_out = True
            else:
                timed_out = False
            _copy(reader, out)
    elapsed = time.monotonic() - started
    if timed_out:
        log(f"nodevm: the VM stopped after {time.monotonic() - started:.0f} s (limit: {deadline - started:.0f} s); "
            f"console tail:\n"
            f"{_tail(run_dir / 'console.log')}")
        return EXIT_TIMEOUT
    try:
        rc = int(status.read_text().strip())
    except (OSError, ValueError):
        log(f"nodevm: the VM stopped after {elapsed:.0f} s without an exit status (qemu exit "
            f"{proc.returncode}); qemu: {_tail(run_dir / 'qemu.log', 5)}\n"
            f"console tail:\n{_tail(run_dir / 'console.log')}")
        return EXIT_NO_STATUS
    log(f"nodevm: the VM ran for {elapsed:.0f} s; exit status {rc}; logs in {run_dir}")
    return rc


def _copy(reader, out) -> bool:
    """Copy what the guest wrote since the last call; True when there was something."""
    chunk = reader.read()
    if chunk:
        out.write(chunk)
        out.flush()
    return bool(chunk)
