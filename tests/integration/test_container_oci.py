"""The oci layer alone, with real runc/crun and conmon: the attach socket, the ctl fifo (resize), exit files.

The scenario runs in a child Python (``python -m tests.integration.test_container_oci HANDLER``) because it makes
itself a child subreaper, as the daemon does, which must not leak into the pytest process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_conmon_attach_socket_and_resize(handler, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    result = subprocess.run([sys.executable, "-m", "tests.integration.test_container_oci", handler], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["attach"] == [[2, "to stdout\n"], [3, "to stderr\n"]]
    assert report["tty_log"][-1].endswith("stdout F 40 120")  # the resize reached the container's pty
    assert report["exit_codes"] == ["137", "0"]
    assert report["leftovers"] == {"processes": [], "cgroups": []}


def _rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    for d in ("etc", "tmp", "proc", "dev", "sys"):
        (root / d).mkdir()
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat", "echo", "stty"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


async def _scenario(handler: str) -> dict:
    from cri.oci import host_facts, spec as S, spec_inputs as SI
    from cri.oci.conmon import BundlePaths, Conmon
    from cri.oci.exitwatch import ExitWatcher
    from cri.oci.reaper import Reaper
    from cri.oci.runtime import OCIRuntime
    from hostos import cgroups, libc

    libc.set_child_subreaper()  # as the daemon
    base = Path(tempfile.mkdtemp(prefix="pycri-oci"))
    cgroup_parent = f"/pycri-oci-{os.getpid()}"
    report: dict = {}
    runtime = OCIRuntime(handler, shutil.which(handler), base / "state")
    exits = base / "exits"
    exited: asyncio.Queue = asyncio.Queue()
    watcher = ExitWatcher(exits, exited.put_nowait)
    watcher.start()
    reaper = Reaper()
    conmon = Conmon("conmon", exits)
    cid, tty_cid = os.urandom(32).hex(), os.urandom(32).hex()
    try:
        _rootfs(base / "rootfs")

        async def create(container_id: str, command: list[str], tty: bool) -> Path:
            bundle = base / container_id
            bundle.mkdir()
            inputs = SI.ContainerInputs(
                container_id=container_id, rootfs=str(base / "rootfs"), stdin=True, tty=tty, command=command,
                host_capabilities=host_facts.daemon_capabilities(), cgroups_path=f"{cgroup_parent}/{container_id}",
                network_mode="POD", pid_mode="CONTAINER", ipc_mode="POD")
            BundlePaths(bundle).config.write_text(json.dumps(S.container_spec(inputs)))
            created = await conmon.create_container(runtime, container_id, bundle, str(bundle / "ctr.log"), "oci",
                                                    stdin=True, tty=tty)
            reaper.watch(created.conmon_pid)
            await runtime.start(container_id)
            return bundle

        bundle = await create(cid, ["sh", "-c", "read line; echo to stdout; echo to stderr >&2; sleep 600"], False)
        attach = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        attach.connect(str(BundlePaths(bundle).attach_socket))
        attach.send(b"go\n")
        frames = []
        while len(frames) < 2:
            frame = await asyncio.get_running_loop().run_in_executor(None, attach.recv, 8192)
            frames.append([frame[0], frame[1:].decode()])
        attach.close()
        report["attach"] = sorted(frames)
        await runtime.kill(cid, 9)

        tty_bundle = await create(tty_cid, ["sh", "-c", "read x; stty size"], True)
        Conmon.resize(tty_bundle, 40, 120)
        attach = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        attach.connect(str(BundlePaths(tty_bundle).attach_socket))
        attach.send(b"\n")
        codes = [await asyncio.wait_for(exited.get(), 10), await asyncio.wait_for(exited.get(), 10)]
        attach.close()
        report["exit_codes"] = [(exits / c).read_text() for c in (cid, tty_cid) if c in codes]
        report["tty_log"] = (tty_bundle / "ctr.log").read_text().splitlines()
    finally:
        for container_id in (cid, tty_cid):
            await runtime.delete(container_id, force=True)
        cgroups.remove(cgroup_parent)
        watcher.stop()
        # conmon writes the exit file, then exits: let it end and the reaper collect it (a loaded host is slow)
        deadline = asyncio.get_running_loop().time() + 30
        while (leftovers := _mentioning(base)) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        reaper.close()
        report["leftovers"] = {"processes": leftovers,
                               "cgroups": [str(d) for d in cgroups.cgroup_dirs(cgroup_parent) if d.exists()]}
        shutil.rmtree(base, ignore_errors=True)
    return report


def _mentioning(base: Path) -> list[str]:
    """Processes whose command line names `base` (our conmons, the containers' own processes)."""
    return [p for p in os.listdir("/proc") if p.isdigit() and str(base).encode() in _cmdline(p)]


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_scenario(sys.argv[1]))))
