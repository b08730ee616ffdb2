"""Reading a checkpoint archive for a restore: it is untrusted input (traversal, links, sizes, missing or malformed
files are refused naming the problem), and the restored container's request follows CRI-O's rules."""

import io
import json
import os
import tarfile

import pytest

from cri.core.containers.restore import restore_request
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.oci import restore
from cri.oci.restore import ArchiveError
from cri.state.container_record import ContainerRequest, MountSpec
from cri.state.sandbox_record import SandboxRecord
from storage.unpack import UnpackLimits

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners")

SPEC = {"process": {"args": ["sh", "-c", "count"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/work"},
        "root": {"path": "/rootfs"}, "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
        "mounts": [{"destination": "/proc", "type": "proc"}, {"destination": "/etc/hosts", "type": "bind"},
                   {"destination": "/data", "type": "bind", "source": "/old/data"}],
        "annotations": {"io.kubernetes.container.hash": "old", "team": "a", "io.kubernetes.pod.uid": "old-uid",
                        "io.kubernetes.cri.sandbox-id": "old-pod"}}
CONFIG = {"id": "c1", "name": "counter", "rootfsImageName": "busybox:latest", "rootfsImageRef": "sha256:ab"}


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o755
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def archive(tmp_path, *, skip=(), extra=(), config=CONFIG, spec=SPEC, deleted=("/etc/group",)):
    path = tmp_path / "ckpt.tar"
    with tarfile.open(path, "w") as tar:
        members = {"config.dump": json.dumps(config).encode(), "spec.dump": json.dumps(spec).encode(),
                   "deleted.files": json.dumps(list(deleted)).encode(), "checkpoint/inventory.img": b"criu",
                   "rootfs-diff.tar": b""}
        for name, data in members.items():
            if name not in skip:
                _add(tar, name, data)
        for entry in extra:
            _add(tar, *entry)
    return path


def _out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@root_only
def test_a_good_archive_is_read(tmp_path):
    ckpt = restore.unpack(archive(tmp_path), _out(tmp_path))
    assert ckpt.config == CONFIG and ckpt.spec == SPEC and ckpt.deleted == ["/etc/group"]
    assert ckpt.image_name == "busybox:latest"
    assert ckpt.images == tmp_path / "out/checkpoint" and ckpt.rootfs_diff == tmp_path / "out/rootfs-diff.tar"


@root_only
@pytest.mark.parametrize("case, message", [
    (dict(skip={"config.dump"}), "config.dump is missing"),
    (dict(skip={"spec.dump"}), "spec.dump is missing"),
    (dict(skip={"checkpoint/inventory.img"}), "inventory.img"),
    (dict(spec={"ociVersion": "1"}), "not an OCI runtime spec"),
    (dict(spec=["not", "an", "object"]), "spec.dump holds a JSON list"),
    (dict(config={"id": "c1"}), "names no image"),
    (dict(deleted=["/etc/../../host"]), "without '..'"),
    (dict(deleted=["relative"]), "not an absolute path"),
    (dict(extra=[("../escape", b"x")]), "contains '..'"),
    (dict(skip={"config.dump"}, extra=[("config.dump", b"", tarfile.SYMTYPE, "/etc/passwd")]),
     "config.dump is not a regular file"),
    (dict(skip={"checkpoint/inventory.img"}, extra=[("checkpoint/x", b""), ("link", b"", tarfile.SYMTYPE, "/"),
                                                    ("link/inventory.img", b"x")]), "symlink"),
])
def test_hostile_or_broken_archives_are_refused_naming_why(tmp_path, case, message):
    with pytest.raises(ArchiveError) as err:
        restore.unpack(archive(tmp_path, **case), _out(tmp_path))
    assert message in str(err.value)
    assert not (tmp_path / "escape").exists()


@root_only
def test_an_oversized_archive_is_refused(tmp_path):
    big = archive(tmp_path, extra=[("checkpoint/pages-1.img", b"\0" * (1 << 20))])
    with pytest.raises(ArchiveError, match="expands beyond"):
        restore.unpack(big, _out(tmp_path), UnpackLimits(max_bytes=1 << 19))


@root_only
def test_an_oversized_dump_is_refused(tmp_path):
    huge = dict(CONFIG, pad="x" * (restore.MAX_DUMP_BYTES + 1))
    with pytest.raises(ArchiveError, match="config.dump is .* bytes, more than"):
        restore.unpack(archive(tmp_path, config=huge), _out(tmp_path))


def test_deleted_files_stay_inside_the_rootfs(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (root / "etc/group").write_text("g")
    (root / "etc/dir").mkdir()
    (root / "etc/dir/f").write_text("f")
    (outside / "precious").write_text("p")
    os.symlink(str(outside), root / "link")
    restore.remove_deleted(root, ["/etc/group", "/etc/dir", "/link/precious", "/absent/x", "/etc/../link/precious"])
    assert not (root / "etc/group").exists() and not (root / "etc/dir").exists()
    assert (outside / "precious").read_text() == "p"


def _ckpt(tmp_path, spec=SPEC):
    return restore.Checkpoint(tmp_path, CONFIG, spec, [])


SANDBOX = SandboxRecord.model_construct(id="pod2", uid="new-uid")


def _request(**kwargs):
    return ContainerRequest(sandbox_id="pod2", name="restored", image="/ckpt.tar", command=["ignored"],
                            labels={"new": "label"}, annotations={"io.kubernetes.container.hash": "new"}, **kwargs)


def test_the_restored_request_follows_crio_rules(tmp_path):
    data = MountSpec(container_path="/data/", host_path="/new/data")
    unasked = MountSpec(container_path="/extra", host_path="/x")
    got = restore_request(_request(mounts=[data, unasked], tty=True), SANDBOX, "/ckpt.tar", _ckpt(tmp_path), True)
    assert got.image == "busybox:latest" and got.name == "restored" and got.labels == {"new": "label"}
    assert got.command == ["sh", "-c", "count"] and got.args == [] and got.working_dir == "/work"
    assert got.envs == [("PATH", "/bin"), ("A", "b=c")]
    assert got.mounts == [data]  # the checkpoint's destinations only, with the new host paths
    assert got.annotations == {"io.kubernetes.container.hash": "new", "team": "a", "io.kubernetes.pod.uid": "new-uid"}
    assert got.security.masked_paths == ["/proc/kcore"] and got.security.readonly_paths == ["/proc/sys"]
    assert not got.tty


def test_a_restore_without_the_checkpoints_bind_mounts_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="expects these mounts .*: /data"):
        restore_request(_request(), SANDBOX, "/ckpt.tar", _ckpt(tmp_path), True)


def test_a_missing_image_or_a_terminal_is_refused(tmp_path):
    with pytest.raises(NotFound, match="busybox:latest.*pull it first"):
        restore_request(_request(), SANDBOX, "/ckpt.tar", _ckpt(tmp_path), False)
    tty = dict(SPEC, process=dict(SPEC["process"], terminal=True))
    with pytest.raises(FailedPrecondition, match="terminal"):
        restore_request(_request(), SANDBOX, "/ckpt.tar", _ckpt(tmp_path, tty), True)


def test_crio_annotations_are_read_from_their_json_value(tmp_path):
    spec = dict(SPEC, mounts=[], annotations={"io.kubernetes.cri-o.Annotations": json.dumps({"team": "b"}),
                                              "io.kubernetes.cri-o.Name": "x"})
    got = restore_request(_request(), SANDBOX, "/ckpt.tar", _ckpt(tmp_path, spec), True)
    assert got.annotations == {"team": "b"}


def _layer(tmp_path):
    layer = tmp_path / "layer"
    (layer / "checkpoint").mkdir(parents=True)
    (layer / "config.dump").write_text(json.dumps(CONFIG))
    (layer / "spec.dump").write_text(json.dumps(SPEC))
    (layer / "checkpoint/inventory.img").write_text("criu")
    return layer


def test_a_checkpoint_image_layer_is_copied_and_checked(tmp_path):
    ckpt = restore.copy_from_image([_layer(tmp_path)], _out(tmp_path))
    assert ckpt.spec == SPEC and (ckpt.images / "inventory.img").read_text() == "criu" and ckpt.rootfs_diff is None


def test_a_checkpoint_image_with_links_or_more_layers_is_refused(tmp_path):
    layer = _layer(tmp_path)
    with pytest.raises(ArchiveError, match="one layer"):
        restore.copy_from_image([layer, layer], _out(tmp_path))
    (layer / "spec.dump").unlink()
    os.symlink("/etc/passwd", layer / "spec.dump")
    with pytest.raises(ArchiveError, match="spec.dump cannot be read"):
        restore.copy_from_image([layer], tmp_path / "out")
