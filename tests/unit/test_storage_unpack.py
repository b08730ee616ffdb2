"""Layer unpacking: overlayfs form, metadata preserved, and hostile layers contained.

Needs root (ownership, device nodes, trusted.* xattrs), as the runtime does."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from storage.errors import HostileLayer
from storage.unpack import UnpackLimits, unpack_layer
from tests.imagebuild import Entry, compress, tar_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")


@pytest.fixture
def area(tmp_path):
    """An empty layer root inside a sandbox directory, with a bait file outside the root."""
    root = tmp_path / "layer"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bait").write_text("original")
    return tmp_path, root, outside


def unpack(tmp_path, root, entries, compression="gzip", limits=UnpackLimits()):
    blob = tmp_path / "blob"
    tar = tar_layer(entries) if isinstance(entries, list) else entries
    blob.write_bytes(compress(tar, compression))
    return unpack_layer(blob, root, limits), tar


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_metadata_links_devices_and_whiteouts(area, compression):
    tmp_path, root, _ = area
    stats, tar = unpack(tmp_path, root, [
        Entry("./", "dir", mode=0o755),
        Entry("bin", "dir", mode=0o711),
        Entry("bin/tool", data=b"#!x", mode=0o4755, uid=1234, gid=5678, xattrs={"user.note": "hi"}),
        Entry("bin/alias", "hardlink", linkname="bin/tool"),
        Entry("bin/sh", "symlink", linkname="/bin/tool", uid=42),
        Entry("dev", "dir"),
        Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        Entry("dev/loop9", "block", devmajor=7, devminor=9, mode=0o660),
        Entry("run/pipe", "fifo", mode=0o600),
        Entry("etc/.wh.removed"),
        Entry("var/.wh..wh..opq"),
        Entry("var/keep", data=b"k"),
        Entry("etc/.wh..wh.plnk"),
    ], compression)
    assert stats.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest() and stats.size == len(tar)
    tool = os.stat(root / "bin/tool")
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (1234, 5678, 0o4755)
    assert int(tool.st_mtime) == 1_700_000_000 and (root / "bin/tool").read_bytes() == b"#!x"
    assert os.getxattr(root / "bin/tool", "user.note") == b"hi"
    assert os.stat(root / "bin/alias").st_ino == tool.st_ino
    assert os.readlink(root / "bin/sh") == "/bin/tool" and os.lstat(root / "bin/sh").st_uid == 42
    assert stat.S_IMODE(os.stat(root / "bin").st_mode) == 0o711
    assert int(os.stat(root / "bin").st_mtime) == 1_700_000_000  # directory times set after their children
    null = os.stat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3
    assert stat.S_ISBLK(os.stat(root / "dev/loop9").st_mode)
    assert stat.S_ISFIFO(os.stat(root / "run/pipe").st_mode)
    whiteout = os.stat(root / "etc/removed")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(root / "var", "trusted.overlay.opaque") == b"y"
    assert (root / "var/keep").read_bytes() == b"k"
    assert sorted(os.listdir(root / "etc")) == ["removed"]


def test_later_entries_replace_earlier_ones_without_following_links(area):
    tmp_path, root, outside = area
    unpack(tmp_path, root, [
        Entry("x", "symlink", linkname=str(outside / "bait")),
        Entry("x", data=b"replaced"),
        Entry("d", data=b"file first"),
        Entry("d", "dir"),
        Entry("d/inner", data=b"1"),
    ])
    assert (outside / "bait").read_text() == "original"
    assert not os.path.islink(root / "x") and (root / "x").read_bytes() == b"replaced"
    assert (root / "d/inner").read_bytes() == b"1"


def test_a_directory_replaced_by_a_link_keeps_its_metadata_off_the_links_target(area):
    """Directory metadata is applied last: by then a later entry may have made the name a symlink to a host file."""
    tmp_path, root, outside = area
    bait = outside / "bait"
    bait.chmod(0o600)
    unpack(tmp_path, root, [
        Entry("esc", "dir", mode=0o777, uid=4242),
        Entry("esc", "symlink", linkname=str(bait)),
        Entry("gone", "dir", mode=0o777),
        Entry(".wh.gone"),
        Entry("dangling", "dir"),
        Entry("dangling", "symlink", linkname="nowhere"),
    ])
    assert stat.S_IMODE(bait.stat().st_mode) == 0o600 and bait.stat().st_uid == 0
    assert os.readlink(root / "esc") == str(bait) and os.readlink(root / "dangling") == "nowhere"


def test_absolute_names_are_contained_in_the_root(area):
    tmp_path, root, outside = area
    unpack(tmp_path, root, [Entry(str(outside / "bait"), data=b"pwned"), Entry("/etc/hosts", data=b"h")])
    assert (outside / "bait").read_text() == "original"
    assert (root / str(outside / "bait").lstrip("/")).read_bytes() == b"pwned"
    assert (root / "etc/hosts").read_bytes() == b"h"


@pytest.mark.parametrize("entries, message", [
    ([Entry("../outside/bait", data=b"pwned")], "'..'"),
    ([Entry("a/../../outside/bait", data=b"pwned")], "'..'"),
    ([Entry("esc", "symlink", linkname="../outside"), Entry("esc/bait", data=b"pwned")], "symlink"),
    ([Entry("esc", "symlink", linkname="/"), Entry("esc/tmp/evil", data=b"pwned")], "symlink"),
    ([Entry("h", "hardlink", linkname="../outside/bait")], "'..'"),
    ([Entry("esc", "symlink", linkname="../outside"), Entry("h", "hardlink", linkname="esc/bait")], "symlink"),
    ([Entry("h", "hardlink", linkname="missing")], "not in this layer"),
    ([Entry("d", "dir"), Entry("h", "hardlink", linkname="d")], "directory"),
    ([Entry("s", "symlink", linkname="x" * 5000)], "'s'"),
    ([Entry("n" * 300, data=b"")], "too long"),
    ([Entry("owner", data=b"", uid=2**32 + 5)], "'owner'"),
    ([Entry("esc", "symlink", linkname="../outside"), Entry("esc/.wh.bait")], "symlink"),
    ([Entry("esc", "symlink", linkname="../outside"), Entry("esc/.wh..wh..opq")], "symlink"),
])
def test_escapes_are_refused_and_nothing_outside_changes(area, entries, message):
    tmp_path, root, outside = area
    with pytest.raises(HostileLayer, match=message):
        unpack(tmp_path, root, entries)
    assert (outside / "bait").read_text() == "original"
    assert os.listdir(outside) == ["bait"]
    assert os.listxattr(outside) == []


def test_overlay_xattrs_from_the_layer_are_dropped(area):
    tmp_path, root, _ = area
    unpack(tmp_path, root, [Entry("d", "dir", xattrs={"trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y"}),
                            Entry("f", data=b"", xattrs={"trusted.overlay.metacopy": "", "user.ok": "1"})])
    assert os.listxattr(root / "d") == []
    assert os.listxattr(root / "f") == ["user.ok"]


def test_decompression_bomb_is_stopped_at_the_cap(area):
    tmp_path, root, _ = area
    with pytest.raises(HostileLayer, match="expands beyond"):
        unpack(tmp_path, root, [Entry("zeros", data=bytes(8 << 20))], limits=UnpackLimits(max_bytes=1 << 20))


def test_too_many_entries_and_giant_headers_are_refused(area):
    tmp_path, root, _ = area
    with pytest.raises(HostileLayer, match="more than 5 entries"):
        unpack(tmp_path, root, [Entry(f"f{i}") for i in range(10)], limits=UnpackLimits(max_entries=5))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "c" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(HostileLayer, match="pax header"):
        unpack(tmp_path, root, buf.getvalue())


def test_truncated_or_corrupt_layers_are_refused(area):
    tmp_path, root, _ = area
    packed = compress(tar_layer([Entry("f", data=os.urandom(200_000))]))
    blob = tmp_path / "blob"
    blob.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(HostileLayer):
        unpack_layer(blob, root)
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    blob.write_bytes(bytes(corrupt))
    with pytest.raises(HostileLayer):
        unpack_layer(blob, root)


_parts = st.sampled_from(["esc", "esc", "a", "..", ".", "", ".wh.a", ".wh..wh..opq", "bait"])
_names = st.lists(_parts, min_size=1, max_size=3).map("/".join)
_targets = st.sampled_from(["../outside", "../outside", "..", "/", "a", "esc/bait", "../outside/bait", "b/../.."])
_entries = st.lists(st.one_of(
    st.builds(lambda n: Entry(n, data=b"pwned"), _names),
    st.builds(lambda n: Entry(n, "dir"), _names),
    st.builds(lambda n, t: Entry(n, "symlink", linkname=t), _names, _targets),
    st.builds(lambda n, t: Entry(n, "hardlink", linkname=t), _names, _names),
), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_entries)
def test_no_layer_writes_outside_its_root(tmp_path, entries):
    """Whatever a layer holds, it unpacks or fails as hostile; nothing outside the root changes."""
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        root, outside = base / "layer", base / "outside"
        root.mkdir()
        outside.mkdir()
        (outside / "bait").write_text("original")
        try:
            unpack(base, root, entries)
        except HostileLayer:
            pass
        assert sorted(os.listdir(base)) == ["blob", "layer", "outside"]
        assert os.listdir(outside) == ["bait"] and (outside / "bait").read_text() == "original"
        assert os.listxattr(outside) == [] and os.listxattr(base) == []
    finally:
        shutil.rmtree(base)
