"""The layer tar reader agrees with tarfile on what layers contain, and refuses what they must not."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings, strategies as st

from storage.errors import HostileLayer
from storage.tarstream import DIRECTORY, HARDLINK, REGULAR, SYMLINK, TarStream

_KINDS = {tarfile.REGTYPE: REGULAR, tarfile.DIRTYPE: DIRECTORY, tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK,
          tarfile.CHRTYPE: "3", tarfile.BLKTYPE: "4", tarfile.FIFOTYPE: "6"}


def build(entries, fmt=tarfile.PAX_FORMAT, pax_global=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_global or {}) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def info(name, kind=tarfile.REGTYPE, size=0, **attrs) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size = kind, size
    for key, value in attrs.items():
        setattr(ti, key, value)
    return ti


def read_all(data: bytes):
    stream = TarStream(io.BytesIO(data))
    return [(e.name.rstrip("/"), e.kind, e.mode, e.uid, e.gid, int(e.mtime), e.linkname, e.devmajor, e.devminor,
             stream.read(1 << 30), dict(e.xattrs)) for e in stream]


def expected(data: bytes):
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for m in tar:
            body = tar.extractfile(m).read() if m.isreg() else b""
            xattrs = {k[13:]: v.encode("utf-8", "surrogateescape") for k, v in m.pax_headers.items()
                      if k.startswith("SCHILY.xattr.")}
            out.append((m.name.rstrip("/"), _KINDS[m.type], m.mode, m.uid, m.gid, int(m.mtime), m.linkname,
                        m.devmajor if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else 0,
                        m.devminor if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else 0, body, xattrs))
    return out


_names = st.text(alphabet="abc/._-é", min_size=1, max_size=150).filter(lambda n: n.strip("/"))
_entry = st.tuples(_names, st.sampled_from(list(_KINDS)), st.binary(max_size=3000), st.integers(0, 2**21 - 1),
                   st.integers(0, 0o7777), st.text(alphabet="xyz/", max_size=120), st.integers(0, 2**33))


@settings(max_examples=120, deadline=None)
@given(st.lists(_entry, max_size=6), st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
def test_agrees_with_tarfile(entries, fmt):
    items = []
    for name, kind, data, uid, mode, link, mtime in entries:
        body = data if kind == tarfile.REGTYPE else b""
        ti = info(name, kind, len(body), uid=uid, gid=uid // 2, mode=mode, mtime=mtime,
                  linkname=link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "", devmajor=uid % 256, devminor=3)
        items.append((ti, body))
    try:
        data = build(items, fmt)
    except ValueError:
        return  # the format cannot hold this entry (ustar name or number limits)
    assert read_all(data) == expected(data)


def test_gnu_long_names_base256_numbers_pax_globals_and_xattrs():
    long = "d/" * 80 + "file"
    data = build([(info(long, size=3, uid=2**40, mtime=5), b"abc"),
                  (info("l", tarfile.SYMTYPE, linkname="t" * 300), b"")], tarfile.GNU_FORMAT)
    entries = read_all(data)
    assert entries[0][0] == long
    assert entries[0][3] == 2**40
    assert entries[0][9] == b"abc"
    assert entries[1][6] == "t" * 300
    pax = build([(info("x", size=1), b"1")], pax_global={"uid": "77"})
    assert read_all(pax)[0][3] == 77
    ti = info("y", size=0)
    ti.pax_headers = {"SCHILY.xattr.user.a": "b", "mtime": "12.5"}
    assert read_all(build([(ti, b"")]))[0][10] == {"user.a": b"b"}


def test_data_left_unread_is_skipped_and_missing_end_blocks_are_fine():
    data = build([(info("a", size=1000), b"a" * 1000), (info("b", size=2), b"bb")])
    assert [e.name for e in TarStream(io.BytesIO(data))] == ["a", "b"]
    without_end = data[: 512 + 1024 + 512 + 512]
    assert [e.name for e in TarStream(io.BytesIO(without_end))] == ["a", "b"]


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:100] + b"X" + d[101:], "checksum"),
    (lambda d: d[:700], "ends in the middle"),
    (lambda d: d[:300], "inside a header"),
    (lambda d: b"not a tar" * 100, "checksum"),
])
def test_corrupt_streams_are_refused(mangle, message):
    data = build([(info("a", size=1000), b"a" * 1000)])
    with pytest.raises(HostileLayer, match=message):
        stream = TarStream(io.BytesIO(mangle(data)))
        for _ in stream:
            while stream.read(4096):
                pass


def test_sparse_and_unknown_types_are_refused():
    ti = info("s", size=0)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    with pytest.raises(HostileLayer, match="sparse"):
        list(TarStream(io.BytesIO(build([(ti, b"")]))))
    with pytest.raises(HostileLayer, match="not supported"):
        list(TarStream(io.BytesIO(build([(info("v", b"V"), b"")], tarfile.GNU_FORMAT))))
