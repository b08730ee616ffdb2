"""make test-node-vm, the part that runs inside the node VM (as root, in /opt/pycri, in its venv).

1. the node-shape integration tests (NODE_TESTS; `--integration=all`: the whole suite);
2. pycri installed as a systemd service from contrib/systemd/pycri.service (Type=notify), with
   the default bridge network (and the critest kit's registries.conf when the kit is here);
3. critest against that service, once per handler (runc, crun), each summed up on one line:
   `critest handler=NAME: N passed, N failed, N skipped`; without critest a line says why.

Each stage has a time limit and fails naming itself past it. Exit status 0 only when the tests
passed, the service came up, and critest had no unexpected failure (or could not run here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conformance.critest import load_summary, log_path

REPO = Path(__file__).resolve().parent.parent.parent
HANDLERS = ("runc", "crun")
ENDPOINT = "unix:///run/pycri/pycri.sock"
UNIT = REPO / "contrib" / "systemd" / "pycri.service"
# What only this VM can show, each test once: what the build machine (cgroup v1 hybrid, no systemd,
# no LSM, kernel 6.18) skips or cannot reach. The rest of the suite runs in `make test`, and
# critest below covers the CRI surface on this node. The whole suite here: `--integration=all`.
NODE_TESTS = (
    # cgroup v2 files: cpu.max/weight, memory.max/high/swap.max, pids.max, unified; PSI; OOM from memory.events
    "tests/integration/test_container_resources.py::test_limits_are_applied_and_updated_on_cgroup_v2",
    "tests/integration/test_container_resources.py::test_stats_carry_pressure_on_cgroup_v2",
    "tests/integration/test_container_resources.py::test_memory_hog_is_reported_oomkilled_with_137",
    # the systemd driver: scopes over D-Bus, kubelet's slices, RuntimeConfig, a pod resize kept across daemon-reload
    "tests/integration/test_cgroup_systemd.py",
    # v2 takes any memory.max and OOM-kills to fit: a pod resize or container update below its use is refused instead
    "tests/integration/test_pod_resize.py::test_a_limit_below_what_the_pod_uses_is_refused_and_named",
    "tests/integration/test_container_resources.py::test_a_container_limit_below_what_it_uses_is_refused_on_cgroup_v2",
    # AppArmor: pycri-default loaded and enforced, localhost profiles
    "tests/integration/test_apparmor.py",
    # kernel 6.1: idmapped layers for user-namespaced pods, CRIU checkpoints
    "tests/integration/test_rootfs_mounts.py::test_an_idmapped_rootfs_shows_the_image_as_the_maps_root",
    "tests/integration/test_userns_rootfs.py",
    "tests/integration/test_checkpoint.py::test_checkpoint_a_running_container",
)
# Stage limits (emulated time). The node tests take about N min; the whole suite well over an hour.
NODE_TESTS_TIMEOUT_S, ALL_TESTS_TIMEOUT_S, TEST_TIMEOUT_S = 15 * 60, 120 * 60, 600
SERVICE_TIMEOUT_S = 300
CRITEST_TIMEOUT_S = 15 * 60


def say(text: str) -> None:
    print(f"[lane {time.strftime('%H:%M:%S')}] {text}", flush=True)


def pytest_command(selection: list[str], junit: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", "-m", "integration"]
    return command + ([f"--junitxml={junit}"] if junit else []) + selection


def test_env() -> dict[str, str]:
    # The driver this node would pick (auto: systemd); pytest-timeout names a hung test.
    return {"TEST_CGROUP_MANAGER": "auto", **os.environ, "PYTEST_TIMEOUT": str(TEST_TIMEOUT_S)}


def integration(selection: list[str], timeout_s: float) -> bool:
    started = time.monotonic()
    say(f"integration tests (at most {timeout_s:.0f} s, {TEST_TIMEOUT_S} s a test): {' '.join(selection)}")
    try:
        rc = subprocess.run(pytest_command(selection), cwd=REPO, env=test_env(), timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        say(f"integration: did not finish within {timeout_s:.0f} s")
        return False
    say(f"integration: pytest exit {rc} in {time.monotonic() - started:.0f} s")
    return rc == 0


def split(files: list[str], parts: int) -> list[list[str]]:
    """Files into `parts` groups of about the same number of tests (greedy, largest first)."""
    weight = {f: max(1, (REPO / f).read_text().count("\ndef test_")) if (REPO / f).is_file() else 1 for f in files}
    groups: list[list[str]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for f in sorted(files, key=lambda f: -weight[f]):
        i = loads.index(min(loads))
        groups[i].append(f)
        loads[i] += weight[f]
    return [g for g in groups if g]


def integration_parallel(files: list[str], workers: int, timeout_s: float, out_dir: Path) -> bool:
    """The files in `workers` pytest processes at once, each on its own share of the files: one process
    keeps about one of the emulated CPUs busy (a daemon's start-up is one Python thread), so two finish
    the suite in about half the time. Each worker's output goes to worker-N.log (and junit-N.xml) in
    out_dir; its summary line is printed here."""
    started = time.monotonic()
    groups = split(files, workers)
    procs = []
    for n, group in enumerate(groups, 1):
        say(f"integration worker {n}: {' '.join(group)}")
        log = open(out_dir / f"worker-{n}.log", "wb")
        procs.append((n, log, subprocess.Popen(pytest_command(group, out_dir / f"junit-{n}.xml"), cwd=REPO,
                                               env=test_env(), stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)))
    ok = True
    deadline = started + timeout_s
    for n, log, proc in procs:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # pytest still prints what it has
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            say(f"integration worker {n}: did not finish within {timeout_s:.0f} s")
        log.close()
        lines = (out_dir / f"worker-{n}.log").read_text(errors="replace").splitlines()
        summary = next((line for line in reversed(lines) if line.startswith("=") and " in " in line), "(no summary)")
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        say(f"integration worker {n}: pytest exit {rc}: {summary.strip('= ')}")
        for line in failed:
            print(f"  {line}", flush=True)
        ok = ok and rc == 0
    say(f"integration: {len(groups)} workers done in {time.monotonic() - started:.0f} s")
    return ok


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S + 60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def main_pid() -> str:
    return systemctl("show", "-p", "MainPID", "--value", "pycri.service").stdout.strip()


def install_service(kit: Path | None) -> None:
    """What README's "Running under systemd" tells an operator to do, on this node; then what the unit
    promises: started once READY=1 came (Type=notify), reloaded by SIGHUP in place, logging to the
    journal with its structured fields."""
    Path("/usr/local/bin/pycri").unlink(missing_ok=True)
    Path("/usr/local/bin/pycri").symlink_to(Path(sys.executable).parent / "pycri")
    shutil.copyfile(UNIT, "/etc/systemd/system/pycri.service")
    # Emulation can stall the event loop for longer than a real node would; the pings are still
    # sent and checked, only the limit is wider.
    dropin = Path("/etc/systemd/system/pycri.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "nodevm.conf").write_text(f"[Service]\nWatchdogSec=600\nTimeoutStartSec={SERVICE_TIMEOUT_S}\n"
                                        f"TimeoutStopSec={SERVICE_TIMEOUT_S}\n")
    conf = Path("/etc/pycri/pycri.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    storage = f'\n[storage]\nregistries_conf = "{kit / "registries.conf"}"\n' if kit else ""
    conf.write_text(f'log_level = "info"\n{storage}')
    cni = Path("/etc/cni/net.d")
    cni.mkdir(parents=True, exist_ok=True)
    if not any(cni.glob("*.conflist")):
        shutil.copyfile(REPO / "cri" / "default-bridge.conflist", cni / "10-pycri-bridge.conflist")
    systemctl("daemon-reload")
    started = time.monotonic()
    systemctl("start", "pycri.service")  # returns once pycri sent READY=1 (Type=notify)
    say(f"pycri.service active (READY=1 after {time.monotonic() - started:.1f} s)")
    pid = main_pid()
    systemctl("reload", "pycri.service")
    if systemctl("is-active", "pycri.service", check=False).stdout.strip() != "active" or main_pid() != pid:
        raise RuntimeError(f"pycri.service did not survive `systemctl reload` (SIGHUP) in place (MainPID {pid})")
    entries = subprocess.run(["journalctl", "-u", "pycri.service", "-o", "json", "--no-pager",
                              "SYSLOG_IDENTIFIER=pycri"], capture_output=True, text=True, timeout=120).stdout
    if not any('"CODE_FUNC"' in line and '"LOGGER"' in line for line in entries.splitlines()):
        raise RuntimeError("pycri.service logged no structured journal entry (SYSLOG_IDENTIFIER=pycri with "
                           "LOGGER and CODE_FUNC)")
    say("pycri.service reloaded in place by SIGHUP; its journal entries carry structured fields")


def stop_service(out_dir: Path) -> bool:
    """Stop the service (STOPPING=1, then a clean exit) and keep its journal; False when it failed."""
    ok = True
    if systemctl("is-active", "pycri.service", check=False).stdout.strip() != "inactive":
        systemctl("stop", "pycri.service", check=False)
        result = systemctl("show", "-p", "Result", "--value", "pycri.service", check=False).stdout.strip()
        if result != "success":
            say(f"pycri.service did not stop cleanly (Result={result})")
            ok = False
    journal = subprocess.run(["journalctl", "-u", "pycri.service", "--no-pager"], capture_output=True,
                             text=True, timeout=120).stdout
    (out_dir / "pycri-service.log").write_text(journal)
    return ok


def critest(handler: str, out_dir: Path) -> tuple[bool, str]:
    """Run the suite with `handler`; return (no unexpected failure, the one-line summary)."""
    env = {**os.environ, "ALLOW_WILDCARD_LISTEN": "1"}  # the VM has no network: HostNetwork specs run
    log = log_path(env, benchmark=False)
    log.with_suffix(".summary.json").unlink(missing_ok=True)
    try:
        rc = subprocess.run([sys.executable, "-m", "conformance.critest", "--endpoint", ENDPOINT,
                             "--runtime-handler", handler], env=env, timeout=CRITEST_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        return False, f"critest handler={handler}: did not finish within {CRITEST_TIMEOUT_S} s"
    summary_file = log.with_suffix(".summary.json")
    if not summary_file.is_file():
        return False, f"critest handler={handler}: did not run (conformance.critest exit {rc})"
    summary = load_summary(summary_file)
    target = out_dir / f"critest-{handler}"
    target.mkdir(parents=True, exist_ok=True)
    for path in (log, summary_file):
        shutil.copy(path, target)
    line = f"critest handler={handler}: {summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped"
    return rc == 0, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.nodevm.lane")
    parser.add_argument("--integration", choices=("node", "all", "none"), default="node",
                        help="node: the tests of what only a production node shows (NODE_TESTS); all: every one")
    parser.add_argument("--files", nargs="+", metavar="FILE",
                        help="with --integration=all: only these test files (a shard of the suite)")
    parser.add_argument("--workers", type=int, default=2, help="with --integration=all: pytest processes at once")
    parser.add_argument("--tests-timeout", type=float, default=ALL_TESTS_TIMEOUT_S,
                        help="with --integration=all: seconds for the tests (then SIGINT: pytest prints its summary)")
    parser.add_argument("--tests-only", action="store_true", help="stop after the integration tests (no service, "
                        "no critest)")
    opts = parser.parse_args(argv)
    out_dir = Path(os.environ.get("NODEVM_OUT", "/tmp"))
    ok = True
    if opts.integration == "node":
        ok = integration(list(NODE_TESTS), NODE_TESTS_TIMEOUT_S)
    elif opts.integration == "all":
        files = opts.files or sorted(str(p.relative_to(REPO)) for p in (REPO / "tests/integration").glob("test_*.py"))
        ok = integration_parallel(files, opts.workers, opts.tests_timeout, out_dir)
    if opts.tests_only:
        say(json.dumps({"result": "ok" if ok else "FAILED"}))
        return 0 if ok else 1
    why_not = os.environ.get("NODEVM_NO_CRITEST") or ("" if os.environ.get("CRITEST_KIT") else "no critest kit here")
    kit = None if why_not else Path(os.environ["CRITEST_KIT"])
    lines = []
    try:
        install_service(kit)
        if why_not:
            lines.append(f"critest was not run: {why_not}")
        for handler in HANDLERS if kit else ():
            say(f"critest with {handler}")
            passed, line = critest(handler, out_dir)
            ok = ok and passed
            lines.append(line)
    except Exception as exc:  # noqa: BLE001 - reported, then the journal tells why
        ok = False
        say(f"the service stage failed: {exc}")
    finally:
        ok = stop_service(out_dir) and ok
    print("\n".join(lines), flush=True)
    say(json.dumps({"result": "ok" if ok else "FAILED"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
