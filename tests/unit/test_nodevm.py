"""The node VM tool's host side: what it boots, what it shares, and the one-VM-per-machine lock."""

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.nodevm import REPO, image, vm, wheels
from conformance.nodevm.__main__ import critest_shares


def makefile_host_packages() -> set[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    return set(re.search(r"^HOST_PACKAGES :=(.*)$", text, re.M).group(1).split())


def test_the_node_has_every_package_the_makefile_installs_on_a_build_machine():
    assert makefile_host_packages() <= set(image.PACKAGES)


def test_the_cache_key_follows_the_package_list():
    assert image.cache_key(image.PACKAGES) == image.cache_key(tuple(reversed(image.PACKAGES)))
    assert image.cache_key(image.PACKAGES) != image.cache_key(image.PACKAGES + ("strace",))


def test_qemu_gets_no_network_a_throwaway_disk_and_read_only_shares(tmp_path):
    img = image.Image(tmp_path / "image")
    cmd = vm.qemu_command(img, tmp_path / "run", [vm.Share("src", REPO)], vm.Machine())
    assert cmd[cmd.index("-nic") + 1] == "none"
    assert "-netdev" not in cmd and "-net" not in cmd
    drive = cmd[cmd.index("-drive") + 1]
    assert "snapshot=on" in drive
    shares = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-virtfs"]
    assert [s for s in shares if "mount_tag=job" in s] == [
        f"local,path={tmp_path / 'run'},mount_tag=job,security_model=none,multidevs=remap"]
    assert all(s.endswith(",readonly=on") for s in shares if "mount_tag=job" not in s)
    append = cmd[cmd.index("-append") + 1]
    assert "apparmor=1 security=apparmor" in append and "systemd.unified_cgroup_hierarchy=1" in append


def test_the_job_names_each_share_at_its_mount_point():
    job = vm.Job(["true"], shares=[vm.Share("wheels", Path("/w"))], env={"A": "1"}, install=False)
    assert job.to_json()["shares"] == {"wheels": "/mnt/nodevm/wheels"}
    assert job.to_json()["command"] == ["true"] and job.to_json()["env"] == {"A": "1"}


def test_a_second_holder_of_the_lock_waits(tmp_path):
    lock = tmp_path / "vm.lock"
    with vm.machine_lock(lambda _: None, lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert f"pid {os.getpid()}" in lock.read_text()
        finally:
            os.close(fd)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
    finally:
        os.close(fd)


def test_without_critest_the_reason_is_given(tmp_path):
    shares, why = critest_shares({"PATH": str(tmp_path), "CRITEST": str(tmp_path / "critest")})
    assert shares == [] and "critest" in why


def test_critest_is_shared_with_its_kit_and_images(tmp_path):
    bin_dir, kit, work = tmp_path / "bin", tmp_path / "kit", tmp_path / "work"
    for tool in ("critest", "crictl"):
        (bin_dir / tool).parent.mkdir(exist_ok=True)
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    kit.mkdir()
    (kit / "run-critest.sh").write_text("")
    env = {"PATH": str(bin_dir), "CRITEST_KIT": str(kit), "CRITEST_WORK": str(work)}
    assert critest_shares(env)[1].startswith("the kit's images are not built")
    (work / "registry").mkdir(parents=True)
    (work / "conf").mkdir()
    (work / "conf" / "test-images.yaml").write_text("")
    shares, why = critest_shares(env)
    assert why is None
    assert {s.tag: s.path for s in shares} == {"critools": bin_dir, "kit": kit, "kitwork": work}


def test_the_site_directory_holds_the_dependencies_and_the_test_extras():
    reqs = wheels.requirements(REPO / "pyproject.toml")
    assert any(r.startswith("grpcio==") for r in reqs)
    assert any(r.startswith("pytest") for r in reqs)


def test_every_node_shape_test_of_the_lane_exists():
    from conformance.nodevm import lane

    missing = []
    for node_id in lane.NODE_TESTS:
        path, _, name = node_id.partition("::")
        if not (REPO / path).is_file() or (name and f"def {name}(" not in (REPO / path).read_text()):
            missing.append(node_id)
    assert missing == []


def test_the_lane_installs_the_shipped_unit():
    from conformance.nodevm import lane

    unit = lane.UNIT.read_text()
    assert "Type=notify" in unit and "ExecStart=/usr/local/bin/pycri daemon" in unit


def test_the_guest_agent_interrupts_its_command_when_the_host_asks(tmp_path, monkeypatch):
    from conformance.nodevm import guest

    monkeypatch.setattr(guest, "JOB", tmp_path)
    out = guest.Output(tmp_path / "output.log")
    # SIGINT's handler set by the command itself, as pytest's is: a disposition inherited as ignored (a make run in
    # the background of a non-interactive shell) would leave it asleep its whole minute.
    script = ("import signal, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\ntry:\n"
              "    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('summary')\n"
              "    sys.exit(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=out.file, start_new_session=True)
    deadline = time.monotonic() + 60  # its handler is in place (a SIGINT before would end it otherwise)
    while "ready" not in (tmp_path / "output.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "interrupt").touch()
    started = time.monotonic()
    assert guest.wait(proc, 60, out) == 2  # what the command said on SIGINT, well before its time limit
    assert time.monotonic() - started < 10
    assert "summary" in (tmp_path / "output.log").read_text()
    (tmp_path / "interrupt").unlink()
    hung = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert guest.wait(hung, 1, out) == 124
    assert "did not finish within 1 s" in (tmp_path / "output.log").read_text()
