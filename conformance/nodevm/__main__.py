"""python -m conformance.nodevm {build | run [options] -- CMD... | lane [options]}: see __init__.py."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from conformance.critest import DEFAULT_WORK, find_critest, find_kit
from conformance.nodevm import CACHE, REPO, image, wheels
from conformance.nodevm.vm import EXIT_TIMEOUT, Job, Machine, Share, boot, machine_lock

DEFAULT_CRITOOLS = Path("/var/tmp/critools/bin")
# make test-node-vm's limits: the lane in the VM (its stages have their own, lane.py), and the whole
# target from an empty cache (measured: see docs/conformance.md), so a hang fails CI with a message.
LANE_TIMEOUT_S = 40 * 60
LANE_BUDGET_S = 50 * 60


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def critest_shares(env: dict[str, str]) -> tuple[list[Share], str | None]:
    """The shares that let the guest run critest, or none and the reason critest cannot run."""
    env = {**env, "PATH": f"{env.get('PATH', os.defpath)}:{DEFAULT_CRITOOLS}"}
    critest = find_critest(env)
    crictl = shutil.which(env.get("CRICTL") or "crictl", path=env["PATH"])
    if critest is None:
        return [], f"no critest binary ($CRITEST unset, none on PATH or in {DEFAULT_CRITOOLS})"
    if crictl is None or Path(crictl).parent != Path(critest).parent:
        return [], f"crictl not found beside {critest} (set $CRICTL to a crictl in the same directory)"
    kit = find_kit(env, REPO)
    if kit is None:
        return [], "critest kit not found (set $CRITEST_KIT to the directory of run-critest.sh)"
    work = Path(env.get("CRITEST_WORK") or DEFAULT_WORK)
    if not (work / "registry").is_dir() or not (work / "conf" / "test-images.yaml").is_file():
        return [], f"the kit's images are not built ({work}/registry, conf/): run {kit}/setup-registry.sh setup"
    shares = [Share("critools", Path(critest).resolve().parent), Share("kit", kit.resolve()), Share("kitwork", work)]
    return shares, None


class OverBudget(Exception):
    """The whole run took longer than --budget allowed."""


@contextmanager
def budget(seconds: float | None):
    """Raise OverBudget in the main thread after `seconds`; the stage under way unwinds (a build step's
    process is killed, qemu is stopped), so a hang fails naming its stage instead of eating CI's time."""
    if not seconds:
        yield
        return

    def expired(*_):
        raise OverBudget()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_in_vm(command: list[str], *, install: bool, timeout_s: float, env: dict[str, str],
              machine: Machine, budget_s: float | None = None) -> int:
    shares, why_not = critest_shares(dict(os.environ))
    job_env = dict(env)
    if why_not:
        job_env["NODEVM_NO_CRITEST"] = why_not
    stage = "waiting for the VM lock"
    try:
        with machine_lock(log), budget(budget_s):  # the budget starts once this run has the machine
            started, stage = time.monotonic(), "building the node image"
            with machine_lock(log, CACHE / "build.lock"):
                img = image.build(log=log)
                all_shares = [Share("src", REPO)]
                if install:
                    stage = "installing the Python dependencies"
                    all_shares.append(Share("site", wheels.site_dir(log=log)))
            log(f"nodevm: image and dependencies ready after {time.monotonic() - started:.0f} s")
            stage = "running the VM"
            job = Job(command=command, shares=all_shares + shares, env=job_env, install=install, timeout_s=timeout_s)
            return boot(img, job, machine, log=log)
    except OverBudget:
        log(f"nodevm: over the budget of {budget_s:.0f} s while {stage}; stopped")
        return EXIT_TIMEOUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.nodevm", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="build (or reuse) the cached node image and wheelhouse")
    for name, text in (("run", "boot the VM, install pycri and run CMD in /opt/pycri (the checkout's copy)"),
                       ("lane", "make test-node-vm: integration tests, then critest with runc and crun")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--cpus", type=int, default=2)
        p.add_argument("--memory", type=int, default=3072, help="MB")
        p.add_argument("--timeout", type=float, default=LANE_TIMEOUT_S if name == "lane" else 3600,
                       help="seconds the command in the VM may take")
        p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="environment for CMD")
        if name == "lane":
            p.add_argument("--integration", choices=("node", "all", "none"), default="node",
                           help="node (default): the node-shape tests (lane.NODE_TESTS); all: tests/integration")
            p.add_argument("--budget", type=float, default=LANE_BUDGET_S,
                           help="seconds for everything once the VM lock is held (image build, dependencies, "
                                "boot, the lane); 0: no limit")
        if name == "run":
            p.add_argument("--no-install", action="store_true", help="do not install pycri (boot and run only)")
            p.add_argument("command", nargs="+", metavar="CMD")
    opts = parser.parse_args(argv)
    if opts.action == "build":  # may run beside a VM: only builds in the same cache wait for each other
        with machine_lock(log, CACHE / "build.lock"):
            print(image.build(log=log).dir)
            print(wheels.site_dir(log=log))
        return 0
    env = dict(item.split("=", 1) for item in opts.env)
    machine = Machine(cpus=opts.cpus, memory_mb=opts.memory)
    if opts.action == "run":
        return run_in_vm(opts.command, install=not opts.no_install, timeout_s=opts.timeout, env=env, machine=machine)
    return run_in_vm(["python", "-m", "conformance.nodevm.lane", f"--integration={opts.integration}"], install=True,
                     timeout_s=opts.timeout, env=env, machine=machine, budget_s=opts.budget)


if __name__ == "__main__":
    # SIGTERM (a CI timeout) unwinds like ^C, so the VM is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
