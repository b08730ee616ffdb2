"""The critest harness: summary parsing, expected-failure judgement and the CI skip path."""

import json
import os
import stat
import time
from pathlib import Path

import pytest

from conformance import critest

DIGEST_SPEC = "[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]"
IDEMPOTENCE_SPEC = "[k8s.io] Idempotence StopPodSandbox should not return an error if not found"


def summary_json(**overrides) -> dict:
    """A summary shaped like the one run-critest.sh writes (trimmed from a containerd run)."""
    data = {
        "ran": 92,
        "passed": 90,
        "failed": 2,
        "skipped": 30,
        "failed_specs": [IDEMPOTENCE_SPEC, DIGEST_SPEC],
        "failure_reasons": {IDEMPOTENCE_SPEC: "rpc error: code = NotFound desc = an error occurred"},
        "suite_errors": [],
        "mode": "validate",
        "endpoint": "unix:///run/containerd/containerd.sock",
        "critest_exit": 1,
        "wall_s": 95,
    }
    data.update(overrides)
    return data


def test_parse_summary_reads_counts_specs_and_reasons():
    summary = critest.parse_summary(summary_json())
    assert (summary.ran, summary.passed, summary.failed, summary.skipped) == (92, 90, 2, 30)
    assert summary.failed_specs == (IDEMPOTENCE_SPEC, DIGEST_SPEC)
    assert summary.failure_reasons[IDEMPOTENCE_SPEC].startswith("rpc error")
    assert summary.wall_s == 95


def test_parse_summary_accepts_the_log_fallback_shape_without_reasons():
    data = summary_json(failed=0, failed_specs=[])
    del data["failure_reasons"], data["suite_errors"], data["wall_s"]
    summary = critest.parse_summary(data)
    assert summary.failure_reasons == {}
    assert summary.suite_errors == ()
    assert summary.wall_s is None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        summary_json(ran="92"),
        summary_json(passed=-1),
        summary_json(skipped=True),
        summary_json(failed_specs="one spec"),
        summary_json(failed_specs=[1, 2]),
        summary_json(failure_reasons=["x"]),
        summary_json(suite_errors=[None]),
        summary_json(failed=3),  # count disagrees with the list
    ],
)
def test_parse_summary_rejects_malformed_input(bad):
    with pytest.raises(critest.SummaryError):
        critest.parse_summary(bad)


def test_load_summary_reports_unreadable_json(tmp_path):
    path = tmp_path / "s.summary.json"
    path.write_text("{not json")
    with pytest.raises(critest.SummaryError, match="cannot read"):
        critest.load_summary(path)


def test_digest_spec_is_an_expected_failure_and_others_are_not():
    verdict = critest.classify(critest.parse_summary(summary_json()))
    assert verdict.expected == (DIGEST_SPEC,)
    assert verdict.unexpected == (IDEMPOTENCE_SPEC,)
    assert verdict.exit_code == critest.EXIT_UNEXPECTED


def test_only_expected_failures_exit_zero():
    summary = critest.parse_summary(summary_json(failed=1, failed_specs=[DIGEST_SPEC]))
    assert critest.classify(summary).exit_code == critest.EXIT_OK


def test_a_failed_suite_node_is_unexpected_even_with_no_failed_spec():
    summary = critest.parse_summary(
        summary_json(failed=0, failed_specs=[], suite_errors=["BeforeSuite: cannot connect"])
    )
    verdict = critest.classify(summary)
    assert verdict.unexpected == ("[suite] BeforeSuite: cannot connect",)
    assert verdict.exit_code == critest.EXIT_UNEXPECTED


def test_report_lists_unexpected_failures_with_reasons_and_the_counts():
    summary = critest.parse_summary(summary_json())
    text = critest.report(summary, critest.classify(summary))
    assert "ran 92, passed 90, failed 2 (1 expected), skipped 30" in text
    assert f"UNEXPECTED FAIL {IDEMPOTENCE_SPEC}\n      -- rpc error" in text
    assert f"expected fail   {DIGEST_SPEC}" in text
    assert text.endswith("result: FAILED")


def test_focus_and_skip_become_ginkgo_flags():
    assert critest.critest_args("Image Manager", "digest") == [
        "-ginkgo.focus=Image Manager",
        "-ginkgo.skip=digest",
    ]
    assert critest.critest_args(None, None) == []
    assert critest.critest_args(None, None, "crun") == ["-runtime-handler=crun"]


def test_without_critest_the_harness_skips_and_exits_zero(tmp_path, capsys):
    env = {"PATH": str(tmp_path), "CRITEST_KIT": str(tmp_path)}
    assert critest.main([], env=env) == critest.EXIT_OK
    assert "SKIPPED: no critest binary" in capsys.readouterr().out


def _executable(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_without_the_kit_the_harness_skips(tmp_path, capsys):
    critest_bin = _executable(tmp_path / "critest", "#!/bin/sh\nexit 0\n")
    env = {"PATH": os.defpath, "CRITEST": str(critest_bin), "CRITEST_KIT": str(tmp_path / "nokit")}
    assert critest.main([], env=env) == critest.EXIT_OK
    assert "SKIPPED: critest kit not found" in capsys.readouterr().out


def _fake_kit(tmp_path: Path, summary: dict | None, rc: int = 0) -> dict:
    """A stand-in run-critest.sh that records its arguments and writes the given summary to OUT."""
    kit = tmp_path / "kit"
    kit.mkdir(parents=True)
    write = ""
    if summary is not None:
        (tmp_path / "canned.json").write_text(json.dumps(summary))
        write = f'cp {tmp_path}/canned.json "${{OUT%.log}}.summary.json"\n'
    _executable(
        kit / "run-critest.sh",
        f'#!/bin/sh\necho "$MODE $NAME $*" > {tmp_path}/args\nmkdir -p "$(dirname "$OUT")"\n{write}exit {rc}\n',
    )
    critest_bin = _executable(tmp_path / "critest", "#!/bin/sh\nexit 0\n")
    return {
        "PATH": os.defpath,
        "CRITEST": str(critest_bin),
        "CRITEST_KIT": str(kit),
        "CRITEST_WORK": str(tmp_path / "work"),
    }


def test_a_run_with_only_the_digest_failure_passes(tmp_path, capsys):
    env = _fake_kit(tmp_path, summary_json(failed=1, failed_specs=[DIGEST_SPEC]))
    rc = critest.main(["--endpoint", "unix:///x.sock", "--focus", "Image"], env=env)
    assert rc == critest.EXIT_OK
    assert (tmp_path / "args").read_text().split() == [
        "validate", "pycri", "unix:///x.sock", "-ginkgo.focus=Image",
    ]
    assert "result: ok" in capsys.readouterr().out


def test_a_run_with_an_unexpected_failure_fails(tmp_path):
    env = _fake_kit(tmp_path, summary_json())
    assert critest.main([], env=env) == critest.EXIT_UNEXPECTED


def test_a_run_without_a_summary_or_with_no_spec_is_not_a_pass(tmp_path):
    assert critest.main([], env=_fake_kit(tmp_path / "a", None, rc=1)) == critest.EXIT_NOT_RUN
    empty = summary_json(ran=0, passed=0, failed=0, failed_specs=[])
    assert critest.main([], env=_fake_kit(tmp_path / "b", empty)) == critest.EXIT_NOT_RUN


def test_own_daemon_network_is_a_bridge_with_leases_in_our_dir_and_host_ports(tmp_path):
    conflist = critest.cni_conflist("br-test", "10.99.0.0/16", tmp_path / "ipam")
    bridge, portmap = conflist["plugins"]
    assert (bridge["type"], bridge["bridge"]) == ("bridge", "br-test")
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.99.0.0/16"}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    assert critest.POD_SUBNET != "10.87.0.0/16"
    assert critest.BRIDGE != "ctrd0"


def test_endpoint_and_start_daemon_exclude_each_other(tmp_path):
    env = _fake_kit(tmp_path, summary_json())
    with pytest.raises(SystemExit):
        critest.main(["--endpoint", "unix:///x.sock", "--start-daemon"], env=env)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_run_past_its_timeout_is_stopped_with_its_children(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    _executable(kit / "run-critest.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {tmp_path}/child\nwait\n")
    rc = critest.run_kit(kit, "unix:///x.sock", [], {"PATH": os.defpath}, timeout=1)
    assert rc == -1
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 5  # the group got its signal; the child's exit itself is not instant
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(child)


EXEC_SPEC = (
    "[k8s.io] Streaming runtime should support streaming interfaces "
    "runtime should support exec with tty=false and stdin=false [Conformance]"
)


def ginkgo_report() -> list:
    """The parts of ginkgo's report.json the harness reads, as critest 1.36 writes them."""
    return [{"SpecReports": [
        {"LeafNodeType": "BeforeSuite", "State": "passed"},
        {
            "LeafNodeType": "It",
            "State": "failed",
            "ContainerHierarchyTexts": ["[k8s.io] Streaming", "runtime should support streaming interfaces"],
            "LeafNodeText": "runtime should support exec with tty=false and stdin=false [Conformance]",
            "Failure": {"Message": 'failed to exec in container "f16"\nUnexpected error:\n'
                        "    <*status.Error | 0x24ba9c5466c8>: \n"
                        "    rpc error: code = Unimplemented desc = Exec is not implemented by pycri\n"
                        "    {\n        s: {}\n    }\noccurred"},
        },
        {"LeafNodeType": "It", "State": "passed", "ContainerHierarchyTexts": ["[k8s.io] Runtime info"],
         "LeafNodeText": "runtime should return version info"},
    ]}]


def test_rpc_errors_finds_the_status_line_of_each_failed_spec():
    assert critest.rpc_errors(ginkgo_report()) == {
        EXEC_SPEC: "rpc error: code = Unimplemented desc = Exec is not implemented by pycri"
    }


@pytest.mark.parametrize("bad", [None, {}, [1], [{"SpecReports": "x"}],
                                  [{"SpecReports": [{"LeafNodeType": "It", "Failure": "x"}]}], [{"SpecReports": [{"LeafNodeType": "It",
                                  "Failure": {"Message": 7}}]}]])
def test_rpc_errors_ignores_what_it_cannot_read(bad):
    assert critest.rpc_errors(bad) == {}


def test_report_adds_the_rpc_status_only_when_the_reason_lacks_it():
    summary = critest.parse_summary(summary_json(
        failed=2, failed_specs=[EXEC_SPEC, IDEMPOTENCE_SPEC],
        failure_reasons={EXEC_SPEC: 'failed to exec in container "f16"',
                         IDEMPOTENCE_SPEC: "rpc error: code = NotFound desc = gone"},
    ))
    status = {EXEC_SPEC: "rpc error: code = Unimplemented desc = Exec is not implemented by pycri",
              IDEMPOTENCE_SPEC: "rpc error: code = NotFound desc = gone"}
    text = critest.report(summary, critest.classify(summary), status)
    assert '-- failed to exec in container "f16"\n      -- rpc error: code = Unimplemented' in text
    assert text.count("code = NotFound") == 1


class _DaemonThatCannotRemovePods:
    def log_tail(self, lines):
        return "last lines"

    def cleanup(self):
        raise RuntimeError("infra process did not exit")


def test_a_daemon_that_cannot_remove_its_pods_fails_the_run_and_the_bridge_still_goes(monkeypatch):
    deleted = []
    monkeypatch.setattr(critest, "delete_link", deleted.append)
    leaks = critest.stop_daemon(_DaemonThatCannotRemovePods())
    assert leaks == ["removing the pods through CRI failed: RuntimeError: infra process did not exit"]
    assert deleted == [critest.BRIDGE]
