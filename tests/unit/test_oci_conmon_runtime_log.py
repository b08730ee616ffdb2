"""The OCI runtime's own messages at create go to a log file in the bundle, not the container's stderr (its log);
a failed create reports the errors from that file."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from cri.oci.conmon import BundlePaths, Conmon, ConmonError, runtime_errors
from cri.oci.runtime import OCIRuntime

RUNC_LOG = (
    '{"level":"warning","msg":"skipping device /dev/char/10:200 for systemd: stat /sys/dev/char/10:200: no such'
    ' file or directory","time":"2026-12-03T22:10:00Z"}\n'
    '{"level":"error","msg":"runc create failed: unable to start container process: exec: \\"/no/such\\": stat'
    ' /no/such: no such file or directory","time":"2026-12-03T22:10:00Z"}\n')
CRUN_LOG = ('{"msg":"executable file `/no/such` not found in $PATH: No such file or directory","level":"error",'
            '"time":"2026-12-03T23:37:40.104787Z"}')  # crun: no newline after its last record


def test_runtime_errors_are_the_error_records_of_runc_and_crun_logs(tmp_path):
    log = tmp_path / "runtime.log"
    log.write_text(RUNC_LOG)
    assert runtime_errors(log) == ('runc create failed: unable to start container process: exec: "/no/such": stat '
                                   '/no/such: no such file or directory')
    log.write_text(CRUN_LOG + CRUN_LOG)
    assert runtime_errors(log) == "executable file `/no/such` not found in $PATH: No such file or directory"
    log.write_text(RUNC_LOG.splitlines()[0] + "\n")
    assert runtime_errors(log) == ""  # a warning is no error
    log.write_text(CRUN_LOG + '\n{"msg":"torn rec')
    assert runtime_errors(log).startswith("executable file")
    assert runtime_errors(tmp_path / "absent") == ""


FAKE_CONMON = r'''
import json, os, sys
argv = sys.argv[1:]
runtime_args = [argv[i + 1] for i, a in enumerate(argv) if a == "--runtime-arg"]
with open(os.environ["FAKE_ARGS"], "w") as f:
    json.dump(runtime_args, f)
os.read(int(os.environ["_OCI_STARTPIPE"]), 1)
log = runtime_args[runtime_args.index("--log") + 1]
if os.environ.get("FAKE_LOG"):
    with open(log, "a") as f:
        f.write(os.environ["FAKE_LOG"])
os.write(int(os.environ["_OCI_SYNCPIPE"]), json.dumps({"data": -1, "message": "what stderr said"}).encode() + b"\n")
'''


def _create(tmp_path: Path, runtime_log: str) -> str:
    script = tmp_path / "conmon.py"
    script.write_text(FAKE_CONMON)
    fake = tmp_path / "conmon"
    fake.write_text(f"#!/bin/sh\nFAKE_ARGS={tmp_path / 'args.json'} FAKE_LOG='{runtime_log}' "
                    f"exec {sys.executable} {script} \"$@\"\n")
    fake.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    conmon = Conmon(str(fake), tmp_path / "exits")
    runtime = OCIRuntime("runc", "/bin/false", tmp_path / "state", extra_args=("--systemd-cgroup",))
    with pytest.raises(ConmonError) as err:
        asyncio.run(conmon.create_container(runtime, "c1", bundle, str(tmp_path / "c1.log"), "c1", timeout=20))
    return str(err.value)


def test_the_runtime_logs_to_the_bundle_and_a_failed_create_reports_its_errors(tmp_path):
    message = _create(tmp_path, RUNC_LOG.replace("'", ""))
    log = BundlePaths(tmp_path / "bundle").runtime_log
    assert json.loads((tmp_path / "args.json").read_text()) == [
        "--root", str(tmp_path / "state"), "--systemd-cgroup", "--log", str(log), "--log-format", "json"]
    assert message.startswith("runc create failed: runc create failed: unable to start container process")
    assert "skipping device" not in message and "what stderr said" not in message


def test_a_stale_runtime_log_is_not_reported_for_a_new_create(tmp_path):
    (tmp_path / "bundle").mkdir()
    BundlePaths(tmp_path / "bundle").runtime_log.write_text(CRUN_LOG)
    assert _create(tmp_path, "") == "runc create failed: what stderr said"
