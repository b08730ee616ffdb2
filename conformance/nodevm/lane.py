"""make test-node-vm, the part that runs inside the node VM (as root, in /opt/pycri, in its venv).

1. the integration test suite;
2. pycri installed as a systemd service from contrib/systemd/pycri.service (Type=notify), with
   the critest kit's registries.conf and the default bridge network;
3. critest against that service, once per handler (runc, crun), each summed up on one line:
   `critest handler=NAME: N passed, N failed, N skipped`.

Exit status 0 only when the suite passed and critest had no unexpected failure (or could not run
here, which is said on a line of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conformance.critest import log_path, load_summary

REPO = Path(__file__).resolve().parent.parent.parent
HANDLERS = ("runc", "crun")
ENDPOINT = "unix:///run/pycri/pycri.sock"
UNIT = REPO / "contrib" / "systemd" / "pycri.service"
INTEGRATION_TIMEOUT_S = 90 * 60
# The whole integration suite takes well over an hour under emulation; by default the lane runs
# the tests of what a production node changes: cgroup v2 and the systemd driver, AppArmor, the
# daemon under systemd, resources, and the pod and container lifecycles that create cgroups.
NODE_TESTS = (
    "tests/integration/test_daemon.py", "tests/integration/test_daemon_sdnotify.py",
    "tests/integration/test_cgroup_systemd.py", "tests/integration/test_container_resources.py",
    "tests/integration/test_apparmor.py", "tests/integration/test_container_lifecycle.py",
    "tests/integration/test_sandbox_lifecycle.py",
)
CRITEST_TIMEOUT_S = 15 * 60


def say(text: str) -> None:
    print(f"[lane {time.strftime('%H:%M:%S')}] {text}", flush=True)


def integration(selection: list[str]) -> bool:
    started = time.monotonic()
    say(f"integration tests: {' '.join(selection)}")
    try:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", "-m", "integration",
                             *selection], cwd=REPO, timeout=INTEGRATION_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        say(f"integration: did not finish within {INTEGRATION_TIMEOUT_S} s")
        return False
    say(f"integration: pytest exit {rc} in {time.monotonic() - started:.0f} s")
    return rc == 0


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def install_service(kit: Path) -> None:
    """What README's "Running under systemd" tells an operator to do, on this node."""
    Path("/usr/local/bin/pycri").unlink(missing_ok=True)
    Path("/usr/local/bin/pycri").symlink_to(Path(sys.executable).parent / "pycri")
    shutil.copyfile(UNIT, "/etc/systemd/system/pycri.service")
    # Emulation can stall the event loop for longer than a real node would; the pings are still
    # sent and checked, only the limit is wider.
    dropin = Path("/etc/systemd/system/pycri.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "nodevm.conf").write_text("[Service]\nWatchdogSec=600\n")
    conf = Path("/etc/pycri/pycri.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f'log_level = "info"\n\n[storage]\nregistries_conf = "{kit / "registries.conf"}"\n')
    cni = Path("/etc/cni/net.d")
    cni.mkdir(parents=True, exist_ok=True)
    if not any(cni.glob("*.conflist")):
        shutil.copyfile(REPO / "cri" / "default-bridge.conflist", cni / "10-pycri-bridge.conflist")
    systemctl("daemon-reload")
    started = time.monotonic()
    systemctl("start", "pycri.service")  # returns once pycri sent READY=1 (Type=notify)
    say(f"pycri.service active (READY=1 after {time.monotonic() - started:.1f} s)")


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
                        help="node: the tests of what a production node changes (NODE_TESTS); all: every one")
    opts = parser.parse_args(argv)
    ok = True
    if opts.integration != "none":
        ok = integration(["tests/integration"] if opts.integration == "all" else list(NODE_TESTS))
    why_not = os.environ.get("NODEVM_NO_CRITEST")
    kit = os.environ.get("CRITEST_KIT")
    if why_not or not kit:
        print(f"critest was not run: {why_not or 'no critest kit in the VM'}", flush=True)
        return 0 if ok else 1
    out_dir = Path(os.environ.get("NODEVM_OUT", "/tmp"))
    lines = []
    try:
        install_service(Path(kit))
        for handler in HANDLERS:
            say(f"critest with {handler}")
            passed, line = critest(handler, out_dir)
            ok = ok and passed
            lines.append(line)
    except Exception as exc:  # noqa: BLE001 - reported, then the journal tells why
        ok = False
        say(f"the critest stage failed: {exc}")
    finally:
        if systemctl("is-active", "pycri.service", check=False).stdout.strip() != "inactive":
            systemctl("stop", "pycri.service", check=False)
        journal = subprocess.run(["journalctl", "-u", "pycri.service", "--no-pager"], capture_output=True,
                                 text=True, timeout=120).stdout
        (out_dir / "pycri-service.log").write_text(journal)
    print("\n".join(lines), flush=True)
    say(json.dumps({"result": "ok" if ok else "FAILED"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
