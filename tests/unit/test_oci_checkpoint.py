"""The checkpoint archive in CRI-O's layout, and the reasons a host or runtime cannot checkpoint."""

import json
import os
import tarfile
from datetime import datetime, timezone

import pytest

from cri.oci import checkpoint as archive
from cri.oci.criu import check_failure, runtime_failure

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted xattrs need root")


@root_only
def test_rootfs_diff_is_an_oci_layer_and_deleted_files_lists_the_whiteouts(tmp_path):
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/app.conf").write_text("changed")
    os.symlink("app.conf", upper / "etc/link")
    os.mknod(upper / "etc/gone", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs' whiteout
    (upper / "var/cache").mkdir(parents=True)
    os.setxattr(upper / "var/cache", "trusted.overlay.opaque", b"y")
    deleted = archive.write_rootfs_diff(upper, tmp_path / "diff.tar")
    assert deleted == ["/etc/gone"]
    with tarfile.open(tmp_path / "diff.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile("etc/app.conf").read() == b"changed"
        assert tar.getmember("etc/link").issym()
    assert names == ["etc", "etc/app.conf", "etc/.wh.gone", "etc/link", "var", "var/cache", "var/cache/.wh..wh..opq"]


def test_the_archive_holds_what_crio_writes(tmp_path):
    work, upper = tmp_path / "work", tmp_path / "upper"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint/pages-1.img").write_bytes(b"\0" * 10)
    (work / "dump.log").write_text("criu log")
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp/new").write_text("x")
    config = archive.config_dump("c" * 64, "app", "example.test/app:1", "sha256:" + "a" * 64, "runc",
                                 1_700_000_000_000_000_000, now=datetime(2026, 12, 3, 13, 0, tzinfo=timezone.utc))
    assert config["createdTime"] == "2023-11-14T22:13:20Z"
    assert config["checkpointedTime"] == "2026-12-03T13:00:00Z"
    location = tmp_path / "out/checkpoint-app.tar"
    archive.write_archive(location, work, config=config, spec={"ociVersion": "1.0.2"}, upper=upper)
    with tarfile.open(location) as tar:
        names = set(tar.getnames())
        assert json.load(tar.extractfile("config.dump"))["rootfsImageRef"] == "sha256:" + "a" * 64
        assert json.load(tar.extractfile("spec.dump")) == {"ociVersion": "1.0.2"}
    assert {"config.dump", "spec.dump", "rootfs-diff.tar", "checkpoint", "checkpoint/pages-1.img",
            "dump.log"} <= names and "deleted.files" not in names
    assert archive.is_archive(str(location)) and os.listdir(location.parent) == [location.name]
    (tmp_path / "junk.tar").write_bytes(b"junk")
    assert not archive.is_archive(str(tmp_path / "junk.tar"))
    assert not archive.is_archive("relative.tar")


def test_reasons_name_what_is_missing():
    out = "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\nError (criu/crtools.c:260): Could not ...\n"
    assert check_failure(out, "6.18.4") == ("`criu check` fails on this host (kernel 6.18.4): "
                                            "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds")
    crun = "crun version 1.8.1\ncommit: f8a0\nspec: 1.0.0\n+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL\n"
    assert "built without CRIU support" in runtime_failure("crun", "/usr/bin/crun", crun)
    assert runtime_failure("crun", "/usr/bin/crun", crun.replace("+YAJL", "+CRIU +YAJL")) is None
    assert runtime_failure("runc", "/usr/sbin/runc", "runc version 1.1.5+ds1\n") is None
