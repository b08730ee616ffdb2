"""Run cri-tools' critest against pycri through the shared critest kit and judge the result.

    python -m conformance.critest [--endpoint unix:///run/pycri/pycri.sock | --start-daemon]
                                  [--focus REGEX] [--skip REGEX] [--benchmark] [--runtime-handler NAME]

The kit's run-critest.sh does the running (offline images, registry checks, ginkgo reports) and
writes `<log>.summary.json`; this module only finds the tools, calls the script and reads the
summary. It is safe in CI: without critest (``$CRITEST`` or ``critest`` on PATH) or without the
kit it prints why it skipped and exits 0. With --start-daemon it runs its own pycri in a temporary
root, with the kit's registries.conf and a bridge network of its own, and afterwards reports
whatever that daemon left on the host (processes, mounts) as a failure.

Exit status: 0 when every failure is an expected one (or the run was skipped); 1 when a spec
failed unexpectedly, a suite node (BeforeSuite...) failed or a daemon we started leaked; 2 when
critest could not run, the daemon did not start, or no spec ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENDPOINT = "unix:///run/pycri/pycri.sock"
DEFAULT_WORK = Path("/var/tmp/critest-kit")
REPO_ROOT = Path(__file__).resolve().parent.parent
# critest's own suite timeout is the kit's TIMEOUT (3h); the wrapper allows a little more.
RUN_TIMEOUT_S = 3 * 3600 + 600
# The network of a daemon started with --start-daemon: apart from the kit's containerd (ctrd0,
# 10.87.0.0/16) so both can run on one host.
BRIDGE, POD_SUBNET = "pycrict0", "10.89.0.0/16"

EXIT_OK, EXIT_UNEXPECTED, EXIT_NOT_RUN = 0, 1, 2


@dataclass(frozen=True)
class ExpectedFailure:
    """A spec no runtime can pass on this setup, with the reason written down."""

    pattern: str  # regex searched in the full spec name
    reason: str


EXPECTED_FAILURES: tuple[ExpectedFailure, ...] = (
    ExpectedFailure(
        r"Image Manager public image with digest should be pulled and removed",
        "pulls test-image-digest@sha256:9700f9a2...: the digest of the upstream manifest's bytes, "
        "which the offline registry cannot serve (the kit's README counts it as expected)",
    ),
)


class SummaryError(ValueError):
    """The summary file is missing fields or has the wrong types."""


@dataclass(frozen=True)
class Summary:
    ran: int
    passed: int
    failed: int
    skipped: int
    failed_specs: tuple[str, ...]
    failure_reasons: dict[str, str] = field(default_factory=dict)
    suite_errors: tuple[str, ...] = ()
    wall_s: int | None = None


@dataclass(frozen=True)
class Verdict:
    unexpected: tuple[str, ...]
    expected: tuple[str, ...]  # expected failures that did fail

    @property
    def exit_code(self) -> int:
        return EXIT_UNEXPECTED if self.unexpected else EXIT_OK


def _count(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SummaryError(f"summary field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _strings(data: dict, key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SummaryError(f"summary field {key!r} must be a list of strings")
    return tuple(value)


def parse_summary(data: object) -> Summary:
    """Validate the kit's summary JSON (already decoded) into a Summary."""
    if not isinstance(data, dict):
        raise SummaryError("summary must be a JSON object")
    reasons = data.get("failure_reasons", {})
    if not isinstance(reasons, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in reasons.items()
    ):
        raise SummaryError("summary field 'failure_reasons' must map strings to strings")
    wall = data.get("wall_s")
    summary = Summary(
        ran=_count(data, "ran"),
        passed=_count(data, "passed"),
        failed=_count(data, "failed"),
        skipped=_count(data, "skipped"),
        failed_specs=_strings(data, "failed_specs"),
        failure_reasons=dict(reasons),
        suite_errors=_strings(data, "suite_errors"),
        wall_s=wall if isinstance(wall, int) else None,
    )
    if summary.failed != len(summary.failed_specs):
        raise SummaryError(
            f"summary says {summary.failed} failed but lists {len(summary.failed_specs)} specs"
        )
    return summary


def load_summary(path: Path) -> Summary:
    try:
        return parse_summary(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise SummaryError(f"cannot read {path}: {exc}") from exc


def rpc_errors(report_json: object) -> dict[str, str]:
    """The gRPC status line ("rpc error: code = ... desc = ...") of each failed spec in ginkgo's
    report.json, keyed like the summary's failed_specs; the summary's one-line reason often stops
    at critest's own words ("failed to exec in container ...") before the status that says why."""
    out: dict[str, str] = {}
    suites = report_json if isinstance(report_json, list) else []
    for suite in suites:
        specs = suite.get("SpecReports") if isinstance(suite, dict) else None
        for spec in specs if isinstance(specs, list) else []:
            if not isinstance(spec, dict) or spec.get("LeafNodeType") != "It":
                continue
            failure = spec.get("Failure")
            message = failure.get("Message") if isinstance(failure, dict) else None
            texts = [*(spec.get("ContainerHierarchyTexts") or []), spec.get("LeafNodeText") or ""]
            if not isinstance(message, str) or not all(isinstance(t, str) for t in texts):
                continue
            status = next((ln.strip() for ln in message.splitlines() if "rpc error: code =" in ln), None)
            if status:
                out[" ".join(t for t in texts if t)] = status[:240]
    return out


def load_rpc_errors(path: Path) -> dict[str, str]:
    """rpc_errors of a report file; an unreadable report only costs the extra detail."""
    try:
        return rpc_errors(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def classify(summary: Summary, expected: tuple[ExpectedFailure, ...] = EXPECTED_FAILURES) -> Verdict:
    """Split failures into expected and unexpected; a failed suite node is always unexpected."""
    patterns = [re.compile(e.pattern) for e in expected]
    hits = tuple(s for s in summary.failed_specs if any(p.search(s) for p in patterns))
    misses = tuple(s for s in summary.failed_specs if s not in hits)
    return Verdict(unexpected=misses + tuple(f"[suite] {e}" for e in summary.suite_errors), expected=hits)


def report(summary: Summary, verdict: Verdict, rpc_status: dict[str, str] | None = None) -> str:
    """The text printed after a run: counts, then each failing spec with its reason and, when the
    reason does not already carry it, the gRPC status the runtime answered."""
    lines = [
        f"critest: ran {summary.ran}, passed {summary.passed}, failed {summary.failed} "
        f"({len(verdict.expected)} expected), skipped {summary.skipped}"
        + (f", wall {summary.wall_s} s" if summary.wall_s is not None else "")
    ]
    for spec in verdict.unexpected:
        lines.append(f"  UNEXPECTED FAIL {spec}")
        reason = summary.failure_reasons.get(spec, "")
        if reason:
            lines.append(f"      -- {reason}")
        status = (rpc_status or {}).get(spec)
        if status and status not in reason:
            lines.append(f"      -- {status}")
    for spec in verdict.expected:
        lines.append(f"  expected fail   {spec}")
    lines.append("result: " + ("FAILED" if verdict.unexpected else "ok"))
    return "\n".join(lines)


def find_critest(env: dict[str, str]) -> str | None:
    """The critest binary the kit would use: $CRITEST (path or name) or critest on PATH."""
    return shutil.which(env.get("CRITEST") or "critest", path=env.get("PATH", os.defpath))


def find_kit(env: dict[str, str], repo_root: Path = REPO_ROOT) -> Path | None:
    """The critest kit: $CRITEST_KIT, else ../shared/critest beside the repo."""
    kit = Path(env["CRITEST_KIT"]) if env.get("CRITEST_KIT") else repo_root.parent / "shared" / "critest"
    return kit if (kit / "run-critest.sh").is_file() else None


def log_path(env: dict[str, str], benchmark: bool) -> Path:
    work = Path(env.get("CRITEST_WORK") or DEFAULT_WORK)
    return work / "results" / ("critest-pycri-bench.log" if benchmark else "critest-pycri.log")


def critest_args(focus: str | None, skip: str | None, handler: str | None = None) -> list[str]:
    args = [f"-runtime-handler={handler}"] if handler else []
    if focus:
        args.append(f"-ginkgo.focus={focus}")
    if skip:
        args.append(f"-ginkgo.skip={skip}")
    return args


def cni_conflist(bridge: str, subnet: str, ipam_dir: Path) -> dict:
    """A bridge + portmap network like the kit gives containerd, with leases under ipam_dir."""
    return {
        "cniVersion": "1.0.0",
        "name": "pycri-critest",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def delete_link(name: str, timeout: float = 10.0) -> None:
    """Remove a network device the CNI bridge plugin created (it never removes its bridge)."""
    proc = subprocess.run(["ip", "link", "delete", name], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
        raise RuntimeError(f"ip link delete {name}: {proc.stderr.strip()}")


def start_daemon(kit: Path):
    """A pycri daemon in a temporary root, configured for the kit's registry and our bridge."""
    from conformance.daemon import Daemon  # grpc and the CRI stubs: only when a daemon is wanted

    base = Path(tempfile.mkdtemp(prefix="pycri-critest-", dir="/tmp"))
    try:
        cni_dir = base / "cni"
        cni_dir.mkdir()
        (cni_dir / "10-pycri-critest.conflist").write_text(
            json.dumps(cni_conflist(BRIDGE, POD_SUBNET, base / "ipam"), indent=2)
        )
        settings = {
            "log_level": "info",
            "storage": {"registries_conf": str(kit / "registries.conf")},
            "network": {"cni_conf_dir": str(cni_dir)},
        }
        daemon = Daemon(settings, base=base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        return daemon.start()
    except BaseException:
        daemon.cleanup()
        raise


def stop_daemon(daemon) -> list[str]:
    """Stop the daemon and remove its root and bridge; return what it had left behind.

    A pod the daemon cannot remove through CRI counts as left behind: the host is cleaned anyway
    (Daemon.cleanup kills and unmounts what remains), but the run must not pass."""
    log_tail = daemon.log_tail(20)
    try:
        leaks = daemon.cleanup()
    except Exception as exc:  # noqa: BLE001 - reported as a leak, the cleanup itself has finished
        leaks = [f"removing the pods through CRI failed: {type(exc).__name__}: {exc}"]
    finally:
        delete_link(BRIDGE)
    if leaks:
        print(f"critest: the daemon's last log lines:\n{log_tail}", file=sys.stderr)
    return leaks


def run_kit(kit: Path, endpoint: str, args: list[str], env: dict[str, str], timeout: float) -> int:
    """Run run-critest.sh with its output on our stdout (the run is long; progress matters).

    The script runs in a session of its own, so that on a timeout or an interrupt critest and the
    script's other children are stopped with it, not left running against the endpoint.
    """
    proc = subprocess.Popen([str(kit / "run-critest.sh"), endpoint, *args], env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"critest: run-critest.sh did not finish within {timeout:.0f} s", file=sys.stderr)
        return -1
    finally:
        if proc.poll() is None:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.critest", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    target.add_argument("--start-daemon", action="store_true",
                        help="run a pycri daemon of our own in a temporary root for the suite")
    parser.add_argument("--focus", help="only specs whose name matches this regex")
    parser.add_argument("--skip", help="also skip specs whose name matches this regex")
    parser.add_argument("--benchmark", action="store_true", help="run critest's benchmarks instead")
    parser.add_argument("--runtime-handler", help="run the specs' pods with this handler (e.g. crun)")
    opts = parser.parse_args(argv)
    env = dict(os.environ if env is None else env)

    critest = find_critest(env)
    if critest is None:
        print("critest: SKIPPED: no critest binary ($CRITEST unset and none on PATH); "
              "build cri-tools v1.36.0 as docs/conformance.md describes")
        return EXIT_OK
    kit = find_kit(env)
    if kit is None:
        print("critest: SKIPPED: critest kit not found (set $CRITEST_KIT to the dir of run-critest.sh)")
        return EXIT_OK

    env["CRITEST"] = critest
    env["NAME"] = "pycri"
    env["MODE"] = "benchmark" if opts.benchmark else "validate"
    log = log_path(env, opts.benchmark)
    env["OUT"] = str(log)
    args = critest_args(opts.focus, opts.skip, opts.runtime_handler)
    if opts.start_daemon:
        try:
            daemon = start_daemon(kit)
        except Exception as exc:  # noqa: BLE001 - any start failure means "could not run"
            print(f"critest: pycri did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_NOT_RUN
        try:
            rc = run_kit(kit, f"unix://{daemon.socket}", args, env, RUN_TIMEOUT_S)
        finally:
            leaks = stop_daemon(daemon)
        for leak in leaks:
            print(f"critest: LEAK after the suite: {leak}")
    else:
        leaks = []
        rc = run_kit(kit, opts.endpoint, args, env, RUN_TIMEOUT_S)
    summary_file = log.with_suffix(".summary.json")
    if rc != 0 or not summary_file.is_file():
        print(f"critest: could not run (run-critest.sh exit {rc}); see {log}", file=sys.stderr)
        return EXIT_NOT_RUN
    try:
        summary = load_summary(summary_file)
    except SummaryError as exc:
        print(f"critest: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    if summary.ran == 0:
        print(f"critest: no spec ran (focus/skip too narrow?); see {log}", file=sys.stderr)
        return EXIT_NOT_RUN
    verdict = classify(summary)
    rpc_status = load_rpc_errors(log.with_name(log.stem + "-report") / "report.json")
    print(report(summary, verdict, rpc_status))
    return EXIT_UNEXPECTED if leaks else verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
