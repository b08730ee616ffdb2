"""The node VM's agent: run at boot by pycri-nodevm-job.service, with Debian's python3 (stdlib only).

It reads job.json from the job share, mounts the other shares, copies the checkout onto the VM's
disk and installs it into a venv over the dependencies the host installed (no network), starts the critest kit's
registry on 127.0.0.1:5000 when the kit is shared, runs the command with its output in the job
share's output.log, and writes the exit status to the share's `status` file. The unit then powers
the VM off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import traceback
import urllib.request
from pathlib import Path

JOB = Path("/mnt/nodevm/job")
SRC = Path("/opt/pycri")
VENV = SRC / ".venv"
KIT_WORK = Path("/var/tmp/critest-kit")
REGISTRY_CONF = Path("/etc/nodevm-registry.yml")
# Not copied into the VM: the host's venv and build products, and git's objects.
SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis")
EXIT_NO_COMMAND = 127
TIME_SCALE = 10
INTERRUPT_GRACE_S = 120


class Output:
    """output.log on the job share: the host streams it while the VM runs."""

    def __init__(self, path: Path):
        self.file = open(path, "ab", buffering=0)

    def say(self, text: str) -> None:
        self.file.write(f"[node-vm {time.strftime('%H:%M:%S')}] {text}\n".encode())


def sh(args: list[str], out: Output, timeout: float = 600, **kwargs) -> None:
    """Run a setup step with its output in output.log; raise naming it when it fails."""
    proc = subprocess.run(args, stdout=out.file, stderr=subprocess.STDOUT, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit status {proc.returncode}")


def mount_shares(shares: dict[str, str], out: Output) -> None:
    for tag, target in shares.items():
        Path(target).mkdir(parents=True, exist_ok=True)
        sh(["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144,cache=loose", tag, target], out)


def host_facts() -> str:
    """One line on what this node is: the facts docs/conformance.md records."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"
    systemd = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"kernel {os.uname().release}; {systemd}; cgroup2 controllers: "
            f"{read('/sys/fs/cgroup/cgroup.controllers')}; AppArmor enabled: "
            f"{read('/sys/module/apparmor/parameters/enabled')}; LSMs: {read('/sys/kernel/security/lsm')}")


def install(site: Path, out: Output) -> None:
    """Copy the checkout onto the disk and install it into a venv whose dependencies are the
    host-installed site directory (pip in the emulated guest is far too slow), the way an editable
    install does: a .pth entry for the tree, and the console scripts pyproject.toml declares."""
    started = time.monotonic()
    shutil.copytree("/mnt/nodevm/src", SRC, ignore=SKIP, symlinks=True)
    sh([sys.executable, "-m", "venv", "--without-pip", str(VENV)], out)
    purelib = Path(subprocess.run([str(VENV / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "nodevm-deps.pth").write_text(f"{site}\n")
    (purelib / "pycri-checkout.pth").write_text(f"{SRC}\n")
    scripts = tomllib.loads((SRC / "pyproject.toml").read_text())["project"].get("scripts", {})
    for name, target in scripts.items():
        module, func = target.split(":")
        script = VENV / "bin" / name
        script.write_text(f"#!{VENV}/bin/python\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)
    out.say(f"installed pycri from the checkout in {time.monotonic() - started:.0f} s")


def start_registry(registry_data: Path, kit_conf: Path, out: Output) -> None:
    """The critest kit's registry, from its data on the share, on 127.0.0.1:5000 in the VM."""
    REGISTRY_CONF.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage:\n  filesystem: {{rootdirectory: {registry_data}}}\n"
        "  maintenance: {readonly: {enabled: true}, uploadpurging: {enabled: false}}\n"
        "http: {addr: 127.0.0.1:5000}\n"
    )
    sh(["systemd-run", "--unit=nodevm-registry", "/usr/bin/docker-registry", "serve", str(REGISTRY_CONF)], out)
    (KIT_WORK / "conf").mkdir(parents=True, exist_ok=True)
    shutil.copytree(kit_conf, KIT_WORK / "conf", dirs_exist_ok=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen("http://127.0.0.1:5000/v2/", timeout=3).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the kit's registry did not answer on 127.0.0.1:5000 within 60 s") from None
            time.sleep(1)


def command_env(job: dict) -> dict[str, str]:
    shares = job["shares"]
    path = [str(VENV / "bin")]
    env = {"HOME": "/root", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "NODEVM_OUT": str(JOB / "out"),
           # Emulation runs Python some 10-25 times slower than the host: stretch the daemon's
           # start wait (conformance/daemon.py) and pytest-timeout's per-test limit.
           "NODEVM_TIME_SCALE": str(TIME_SCALE), "PYTEST_TIMEOUT": str(int(300 * TIME_SCALE))}
    if "critools" in shares:
        path.append(shares["critools"])
        env["CRITEST"] = f"{shares['critools']}/critest"
        env["CRICTL"] = f"{shares['critools']}/crictl"
    if "kit" in shares:
        env["CRITEST_KIT"] = shares["kit"]
        env["CRITEST_WORK"] = str(KIT_WORK)
    env["PATH"] = ":".join([*path, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    return {**env, **job["env"]}


def run(job: dict, out: Output) -> int:
    shares = job["shares"]
    mount_shares({tag: target for tag, target in shares.items() if tag != "job"}, out)
    out.say(host_facts())
    cwd = "/"
    if job["install"]:
        install(Path(shares["site"]), out)
        cwd = str(SRC)
    if "kitwork" in shares:
        start_registry(Path(shares["kitwork"]) / "registry", Path(shares["kitwork"]) / "conf", out)
    out.say(f"running {job['command']}")
    try:
        proc = subprocess.Popen(job["command"], stdin=subprocess.DEVNULL, stdout=out.file, stderr=subprocess.STDOUT,
                                cwd=cwd, env=command_env(job), start_new_session=True)
    except FileNotFoundError as exc:
        out.say(f"cannot run the command: {exc}")
        return EXIT_NO_COMMAND
    return wait(proc, job["timeout_s"], out)


def wait(proc: subprocess.Popen, timeout_s: float, out: Output) -> int:
    """The command's exit status. When the host asks (an `interrupt` file in the job share: it was stopped),
    the command gets SIGINT and INTERRUPT_GRACE_S to finish (pytest then still prints its summary)."""
    deadline = time.monotonic() + timeout_s
    interrupted = False
    while True:
        try:
            return proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if not interrupted and (JOB / "interrupt").exists():
            out.say("the host asked to stop: SIGINT to the command")
            os.killpg(proc.pid, signal.SIGINT)
            interrupted, deadline = True, min(deadline, time.monotonic() + INTERRUPT_GRACE_S)
        if time.monotonic() > deadline:
            if not interrupted:
                out.say(f"the command did not finish within {timeout_s:.0f} s")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124


def main() -> int:
    out = Output(JOB / "output.log")
    status = 125
    try:
        status = run(json.loads((JOB / "job.json").read_text()), out)
    except Exception:  # noqa: BLE001 - whatever failed is reported to the host, then the VM stops
        out.say("the node VM agent failed:\n" + traceback.format_exc())
    finally:
        with open(JOB / "out" / "journal.txt", "wb") as journal:
            subprocess.run(["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], stdout=journal,
                           stderr=subprocess.STDOUT, timeout=120)
        tmp = JOB / "status.tmp"
        tmp.write_text(f"{status}\n")
        os.rename(tmp, JOB / "status")
        os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
