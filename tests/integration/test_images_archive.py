"""`pycri image import`: OCI layouts (directory and tarball, several images, an index) and
docker-archive tarballs load into the store and show in `pycri image ls`; bad archives fail
clearly and leave nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from storage.errors import ArchiveError, NoSpace
from storage.images import ImageStore
from storage.manifest import host_platform
from tests.imagebuild import Entry, build_busybox_image, build_index, write_docker_archive, write_oci_layout

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")]
REPO = Path(__file__).resolve().parents[2]


def pycri_image(*args: str, root: Path) -> subprocess.CompletedProcess:
    config = root.parent / "image-cli.conf"
    config.write_text(f'[storage]\nregistries_conf = "{root.parent / "no-registries.conf"}"\n')
    return subprocess.run([sys.executable, "-m", "cri", "image", *args, "--root", str(root), "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def tar_dir(source: Path, target: Path) -> Path:
    with tarfile.open(target, "w") as tar:
        for item in sorted(source.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(source)), recursive=False)
    return target


def test_import_oci_layout_directory_and_tarball_and_docker_archive(tmp_path):
    arch, _ = host_platform()
    app = build_busybox_image(extra_layers=[[Entry("app", data=b"1")]], config={"User": "nobody"})
    mine = build_busybox_image(extra_layers=[[Entry("arch", data=b"mine")]])
    other = build_busybox_image(extra_layers=[[Entry("arch", data=b"other")]], architecture="s390x")
    index = build_index([(other, {"os": "linux", "architecture": "s390x"}), (mine, {"os": "linux", "architecture": arch})])
    layout = write_oci_layout(tmp_path / "layout", [(app, "example.test/team/app:1"), (index, "example.test/multi:2")])
    saved = write_docker_archive(tmp_path / "saved.tar", build_busybox_image(extra_layers=[[Entry("d", data=b"d")]]),
                                 ["docker.io/library/saved:3", "example.test/saved:4"])
    root = tmp_path / "root"

    first = pycri_image("import", str(layout), root=root)
    assert first.returncode == 0, first.stderr
    assert f"{app.id} example.test/team/app:1" in first.stdout
    assert f"{mine.id} example.test/multi:2" in first.stdout
    again = pycri_image("import", str(tar_dir(layout, tmp_path / "layout.tar")), root=root)
    assert again.returncode == 0, again.stderr  # the same images again: nothing changes
    docker = pycri_image("import", str(saved), root=root)
    assert docker.returncode == 0, docker.stderr
    assert "docker.io/library/saved:3 example.test/saved:4" in docker.stdout, docker.stderr
    listing = pycri_image("ls", root=root)
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines()[1:]]
    assert names == ["docker.io/library/saved:3", "example.test/multi:2", "example.test/saved:4", "example.test/team/app:1"]

    store = ImageStore(root / "storage")
    multi = store.get("example.test/multi:2")
    assert multi.id == mine.id and multi.repo_digests == [f"example.test/multi@{index.digest}"]
    assert store.get("example.test/team/app:1").user == "nobody"
    rootfs = store.create_rootfs("c-imported", mine.id)
    try:
        assert (rootfs.path / "arch").read_bytes() == b"mine"
    finally:
        store.remove_rootfs("c-imported")


def empty_dir(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


def junk_file(d: Path) -> Path:
    (d / "junk.tar").write_bytes(b"not a tar at all" * 100)
    return d / "junk.tar"


def broken_index(d: Path) -> Path:
    (d / "x").mkdir()
    (d / "x/index.json").write_text("{")
    return d / "x"


@pytest.mark.parametrize("make, message", [(empty_dir, "neither an OCI layout"), (junk_file, "not a readable tar"),
                                           (broken_index, "not valid JSON")])
def test_bad_archives_fail_naming_the_problem(tmp_path, make, message):
    store = ImageStore(tmp_path / "root")
    with pytest.raises(ArchiveError, match=message):
        store.import_archive(make(tmp_path))
    assert store.list() == []


def test_an_archive_missing_a_layer_leaves_nothing(tmp_path):
    image = build_busybox_image(extra_layers=[[Entry("x", data=b"x")]])
    layout = write_oci_layout(tmp_path / "layout", [(image, "example.test/broken:1")])
    os.unlink(next(p for p in (layout / "blobs/sha256").iterdir() if p.stat().st_size < 500 and p.name != image.digest[7:]
                   and p.name != image.config_digest[7:]))
    store = ImageStore(tmp_path / "root")
    with pytest.raises(ArchiveError, match="missing"):
        store.import_archive(layout)
    assert store.list() == []
    assert os.listdir(store.root / "layers") == [] and os.listdir(store.root / "blobs/sha256") == []


def test_import_refuses_while_the_daemon_runs_on_the_root(daemon_factory, tmp_path):
    daemon = daemon_factory()
    layout = write_oci_layout(tmp_path / "layout", [(build_busybox_image(), "example.test/app:1")])
    result = pycri_image("import", str(layout), root=daemon.root)
    assert result.returncode != 0 and "already using root" in result.stderr


def test_pinned_images_by_pattern_and_by_import_pin(daemon_factory, tmp_path):
    from cri.api.v1 import api_pb2

    daemon = daemon_factory({"storage": {"pinned_images": ["example.test/infra/*", "*keep-me*"]}})
    daemon.stop()
    layout = write_oci_layout(tmp_path / "layout", [
        (build_busybox_image(extra_layers=[[Entry("a", data=b"a")]]), "example.test/infra/pause:1"),
        (build_busybox_image(extra_layers=[[Entry("b", data=b"b")]]), "example.test/app/keep-me-too:2"),
        (build_busybox_image(extra_layers=[[Entry("c", data=b"c")]]), "example.test/app/plain:3")])
    pinned_layout = write_oci_layout(tmp_path / "pinned", [
        (build_busybox_image(extra_layers=[[Entry("d", data=b"d")]]), "example.test/app/imported:4")])
    assert pycri_image("import", str(layout), root=daemon.root).returncode == 0
    result = pycri_image("import", "--pin", str(pinned_layout), root=daemon.root)
    assert result.returncode == 0 and "(pinned)" in result.stdout, result.stderr
    # importing it again without --pin does not unpin it
    assert pycri_image("import", str(pinned_layout), root=daemon.root).returncode == 0
    daemon.start()

    listed = {i.repo_tags[0]: i.pinned for i in daemon.images.ListImages(api_pb2.ListImagesRequest()).images}
    assert listed == {"example.test/infra/pause:1": True, "example.test/app/keep-me-too:2": True,
                      "example.test/app/plain:3": False, "example.test/app/imported:4": True}
    for name, pinned in listed.items():
        status = daemon.images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)))
        assert status.image.pinned is pinned, name



def missing_blob(layout: Path, data: bytes) -> None:
    os.unlink(layout / "blobs/sha256" / hashlib.sha256(data).hexdigest())


def test_a_failing_image_of_an_archive_undoes_the_ones_before_it(tmp_path):
    store = ImageStore(tmp_path / "root")
    kept = write_oci_layout(tmp_path / "kept", [(build_busybox_image(), "example.test/moved:1")])
    [owner] = store.import_archive(kept)
    good = build_busybox_image(extra_layers=[[Entry("good", data=b"good")]])
    bad = build_busybox_image(extra_layers=[[Entry("bad", data=b"bad")]])
    layout = write_oci_layout(tmp_path / "layout", [(good, "example.test/moved:1"), (bad, "example.test/bad:1")])
    missing_blob(layout, bad.blobs[json.loads(bad.manifest)["layers"][-1]["digest"]])
    with pytest.raises(ArchiveError, match="missing"):
        store.import_archive(layout)
    again = ImageStore(tmp_path / "root")  # what is on disk, too
    for view in (store, again):
        assert [(r.id, r.repo_tags) for r in view.list()] == [(owner.id, ["example.test/moved:1"])]
        assert sorted(os.listdir(view.root / "layers")) == sorted(c.removeprefix("sha256:") for c in owner.chain_ids)


def test_a_failing_record_write_undoes_the_whole_import(tmp_path, monkeypatch):
    store = ImageStore(tmp_path / "root")
    [owner] = store.import_archive(write_oci_layout(tmp_path / "kept", [(build_busybox_image(), "example.test/moved:1")]))
    first = build_busybox_image(extra_layers=[[Entry("one", data=b"1")]])
    second = build_busybox_image(extra_layers=[[Entry("two", data=b"2")]])
    layout = write_oci_layout(tmp_path / "layout", [(first, "example.test/moved:1"), (second, "example.test/two:1")])
    save, saved = store._records._save, []

    def full_disk(snapshot):
        saved.append(snapshot["id"])
        if len(saved) == 3:  # the first image and the old owner of its tag are written; the second fails
            raise OSError(errno.ENOSPC, "No space left on device")
        save(snapshot)
    monkeypatch.setattr(store._records, "_save", full_disk)
    with pytest.raises(NoSpace, match="no space"):
        store.import_archive(layout)
    monkeypatch.setattr(store._records, "_save", save)
    again = ImageStore(tmp_path / "root")
    for view in (store, again):
        assert [(r.id, r.repo_tags) for r in view.list()] == [(owner.id, ["example.test/moved:1"])]
        assert sorted(os.listdir(view.root / "layers")) == sorted(c.removeprefix("sha256:") for c in owner.chain_ids)
