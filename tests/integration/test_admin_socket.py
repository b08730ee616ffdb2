"""The admin socket of a running daemon: live image import (file, OCI layout directory, docker-archive on
stdin, --pin), and `pycri image ls`, `ps`, `pods`, `inspect`, `timeline` reading the daemon; root only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cri.api.v1 import api_pb2
from tests.imagebuild import Entry, build_busybox_image, write_docker_archive, write_oci_layout
from tests.integration.helpers_containers import pod_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def pycri(d, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cri", *args, "--config", str(d.config_path)], cwd=REPO,
                            input=stdin, capture_output=True, timeout=120)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def listed(d) -> dict[str, bool]:
    images = d.images.ListImages(api_pb2.ListImagesRequest(), timeout=10).images
    return {tag: image.pinned for image in images for tag in image.repo_tags}


def test_images_import_into_the_running_daemon_and_its_objects_read_back(daemon, tmp_path):
    layout = write_oci_layout(tmp_path / "layout", [(build_busybox_image(extra_layers=[[Entry("a", data=b"a")]]),
                                                     "example.test/layout:1")])
    saved = write_docker_archive(tmp_path / "saved.tar", build_busybox_image(extra_layers=[[Entry("s", data=b"s")]]),
                                 ["example.test/saved:2"])
    imported = pycri(daemon, "image", "import", str(layout))
    assert imported.returncode == 0, imported.stderr
    piped = pycri(daemon, "image", "import", "-", "--pin", stdin=saved.read_bytes())
    assert piped.returncode == 0 and "example.test/saved:2 (pinned)" in piped.stdout, piped.stderr
    assert listed(daemon) == {"example.test/layout:1": False, "example.test/saved:2": True}
    assert "import" in daemon.log_tail()  # through the daemon, not around it

    listing = pycri(daemon, "image", "ls")
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == ["example.test/layout:1",
                                                                             "example.test/saved:2"]
    assert listing.stdout.splitlines()[2].endswith("yes")

    logs = tmp_path / "logs"
    logs.mkdir()
    config = pod_config(logs, name="adminpod")
    pod = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        cid = daemon.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=config, config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="worker"), image=api_pb2.ImageSpec(image="example.test/saved:2"),
                command=["sleep", "60"], log_path="w.log")), timeout=60).container_id
        pods = pycri(daemon, "pods").stdout.splitlines()
        assert len(pods) == 2
        assert pods[1].startswith(pod[:13])
        assert "ctr-test/adminpod" in pods[1]
        assert "ready" in pods[1]
        ps = pycri(daemon, "ps").stdout.splitlines()
        assert len(ps) == 2
        assert ps[1].split()[:3] == [cid[:13], "worker", "created"]
        assert pod[:13] in ps[1]
        inspected = json.loads(pycri(daemon, "inspect", cid[:12]).stdout)
        assert inspected["kind"] == "container"
        assert inspected["record"]["id"] == cid
        assert inspected["record"]["sandbox_id"] == pod
        assert json.loads(pycri(daemon, "inspect", pod).stdout)["kind"] == "pod"
        image = json.loads(pycri(daemon, "inspect", "example.test/layout:1").stdout)
        assert image["kind"] == "image"
        assert image["record"]["repo_tags"] == ["example.test/layout:1"]
        missing = pycri(daemon, "inspect", "0" * 20)
        assert missing.returncode == 1
        assert "no container, pod or image" in missing.stderr

        table = pycri(daemon, "timeline", "adminpod")
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith(f"POD ctr-test/adminpod {pod[:13]}")
        phases = [line.split()[1] for line in table.stdout.splitlines()[2:] if line.strip()]
        assert "namespaces" in phases and "sandbox_files" in phases
        svg = tmp_path / "t.svg"
        drawn = pycri(daemon, "timeline", "--svg", str(svg))
        assert drawn.returncode == 0, drawn.stderr
        assert ET.parse(svg).getroot().tag.endswith("svg")
    finally:
        daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def test_a_bad_archive_is_refused_with_the_daemons_reason_and_the_daemon_goes_on(daemon):
    bad = pycri(daemon, "image", "import", "-", stdin=b"not a tarball at all" * 100)
    assert bad.returncode == 1
    assert "pycri image import:" in bad.stderr
    empty = pycri(daemon, "image", "import", "-", stdin=b"")
    assert empty.returncode == 1
    assert "empty" in empty.stderr
    listing = pycri(daemon, "image", "ls")
    assert listing.returncode == 0, listing.stderr  # the daemon still serves
    assert list((daemon.root / "admin-spool").iterdir()) == []


def test_the_admin_socket_is_roots_alone(daemon):
    admin = daemon.base / "cri-admin.sock"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert admin.stat().st_uid == 0
    probe = ("import os, socket, sys\nos.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, "
             "65534)\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('denied'); sys.exit()\n"
             "s.sendall(b'{\"op\": \"pods\"}\\n'); s.shutdown(socket.SHUT_WR); print(s.makefile().readline())")
    assert subprocess.run([sys.executable, "-c", probe, str(admin)], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "denied"
    os.chmod(admin, 0o666)  # even reachable, it answers root only (SO_PEERCRED)
    answer = subprocess.run([sys.executable, "-c", probe, str(admin)], capture_output=True, text=True, timeout=30)
    assert json.loads(answer.stdout or answer.stderr) == {"ok": False, "error": "the admin socket serves root only"}


def test_without_a_daemon_the_commands_say_so_and_import_works_offline(daemon, tmp_path):
    daemon.stop()
    assert not (daemon.base / "cri-admin.sock").exists()
    ps = pycri(daemon, "ps")
    assert ps.returncode == 1 and "no pycri daemon answers" in ps.stderr
    saved = write_docker_archive(tmp_path / "saved.tar", build_busybox_image(), ["example.test/offline:1"])
    offline = pycri(daemon, "image", "import", "-", stdin=saved.read_bytes())
    assert offline.returncode == 0, offline.stderr
    assert "example.test/offline:1" in pycri(daemon, "image", "ls").stdout


def test_image_commands_for_another_root_leave_the_running_daemon_alone(daemon, tmp_path):
    saved = write_docker_archive(tmp_path / "saved.tar", build_busybox_image(), ["example.test/elsewhere:1"])
    other = tmp_path / "other-root"
    result = pycri(daemon, "image", "import", str(saved), "--root", str(other))
    assert result.returncode == 0, result.stderr
    assert listed(daemon) == {}
    assert "example.test/elsewhere:1" in pycri(daemon, "image", "ls", "--root", str(other)).stdout
