"""A lean, strict reader of tar streams (ustar, GNU long names, pax), for layer unpacking.

tarfile parses every header field generically and buffers through several layers; a layer with
thousands of small entries spent most of its unpack time there. This reader takes 512-byte
headers straight from one buffer, understands exactly what image layers use, and refuses the
rest (sparse files, multi-volume, oversized metadata records) instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

from storage.errors import HostileLayer

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_MAX_RECORD = 1 << 20  # pax headers and GNU long names bigger than this are hostile
_CHUNK = 256 << 10

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {b"0": REGULAR, b"\0": REGULAR, b"7": REGULAR, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR,
          b"4": BLOCKDEV, b"5": DIRECTORY, b"6": FIFO}
_PAX_INT = {"uid", "gid", "size"}


@dataclass(slots=True)
class TarEntry:
    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(raw: bytes, what: str) -> int:
    """Octal ASCII (NUL/space padded) or GNU base-256 (high bit of the first byte set)."""
    if raw and raw[0] & 0x80:
        if raw[0] == 0xFF:
            raise HostileLayer(f"negative {what} in a tar header")
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise HostileLayer(f"bad {what} {text[:20]!r} in a tar header") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156], "checksum")
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
    return stored == signed


def _pax_records(data: bytes) -> dict[str, bytes]:
    """'<len> <key>=<value>\\n' records; values stay bytes (xattrs may be binary)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise HostileLayer("malformed pax header record") from None
        if space < 0 or length <= 0 or pos + length > len(data) or data[pos + length - 1:pos + length] != b"\n":
            raise HostileLayer("malformed pax header record")
        key, eq, value = data[space + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise HostileLayer("malformed pax header record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class TarStream:
    """Entries of a tar stream read from `source` (anything with read(n))."""

    def __init__(self, source: Readable):
        self._source = source
        self._buf = b""
        self._off = 0
        self._left = 0  # data bytes of the current entry not yet consumed
        self._pad = 0   # padding after them

    def _fill(self, n: int) -> bool:
        avail = len(self._buf) - self._off
        if avail >= n:
            return True
        pieces = [self._buf[self._off:]]
        while avail < n:
            chunk = self._source.read(_CHUNK)
            if not chunk:
                break
            pieces.append(chunk)
            avail += len(chunk)
        self._buf, self._off = b"".join(pieces), 0
        return avail >= n

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise HostileLayer("tar stream ends in the middle of an entry")
        data = self._buf[self._off:self._off + n]
        self._off += n
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            avail = len(self._buf) - self._off
            if avail:
                step = min(avail, n)
                self._off += step
                n -= step
            elif not self._fill(min(n, _CHUNK)):
                raise HostileLayer("tar stream ends in the middle of an entry")

    def read(self, n: int) -> bytes:
        """Up to n bytes of the current entry's data (b"" when it has none left)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        avail = len(self._buf) - self._off
        if avail:
            data = self._buf[self._off:self._off + min(n, avail)]
            self._off += len(data)
        else:
            data = self._source.read(n)
            if not data:
                raise HostileLayer("tar stream ends in the middle of an entry")
        self._left -= len(data)
        return data

    def _record(self, size: int, what: str) -> bytes:
        if size > _MAX_RECORD:
            raise HostileLayer(f"tar {what} of {size} bytes")
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def __iter__(self) -> Iterator[TarEntry]:
        global_pax: dict[str, bytes] = {}
        pax: dict[str, bytes] = {}
        long_name = long_link = None
        while True:
            self._skip(self._left + self._pad)  # whatever the consumer left of the previous entry
            self._left = self._pad = 0
            if not self._fill(BLOCK):
                if len(self._buf) - self._off:
                    raise HostileLayer("tar stream ends inside a header")
                return  # end of stream without the two zero blocks: accepted, like tar does
            header = self._take(BLOCK)
            if header == _ZERO_BLOCK:
                return
            if not _checksum_ok(header):
                raise HostileLayer("tar header checksum mismatch (not a tar stream, or corrupt)")
            typeflag = header[156:157]
            size = _number(header[124:136], "size")
            if typeflag == b"x":
                pax.update(_pax_records(self._record(size, "pax header")))
                continue
            if typeflag == b"g":
                global_pax.update(_pax_records(self._record(size, "pax global header")))
                continue
            if typeflag == b"L":
                long_name = _text(self._record(size, "long name"))
                continue
            if typeflag == b"K":
                long_link = _text(self._record(size, "long link name"))
                continue
            kind = _TYPES.get(typeflag)
            if kind is None:
                raise HostileLayer(f"tar entry type {typeflag!r} is not supported in a layer")
            name = _text(header[0:100])
            if header[257:263] == b"ustar\x00":
                prefix = _text(header[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            entry = TarEntry(long_name or name, kind, _number(header[100:108], "mode"),
                             _number(header[108:116], "uid"), _number(header[116:124], "gid"), size,
                             float(_number(header[136:148], "mtime")), long_link or _text(header[157:257]))
            if kind in (CHAR, BLOCKDEV):
                entry.devmajor = _number(header[329:337], "device major")
                entry.devminor = _number(header[337:345], "device minor")
            for records in (global_pax, pax):
                self._apply_pax(entry, records)
            pax, long_name, long_link = {}, None, None
            if typeflag == b"\0" and entry.name.endswith("/"):
                entry.kind = DIRECTORY  # pre-POSIX tars mark directories by the trailing slash
            if entry.kind != REGULAR:
                entry.size = 0  # only regular files carry data, whatever the header says (as tar and Go do)
            self._left, self._pad = entry.size, -entry.size % BLOCK
            yield entry

    @staticmethod
    def _apply_pax(entry: TarEntry, records: dict[str, bytes]) -> None:
        for key, value in records.items():
            if key == "path":
                entry.name = value.decode("utf-8", "surrogateescape")
            elif key == "linkpath":
                entry.linkname = value.decode("utf-8", "surrogateescape")
            elif key in _PAX_INT:
                try:
                    number = int(value)
                except ValueError:
                    raise HostileLayer(f"bad pax {key} {value[:20]!r}") from None
                if number < 0:
                    raise HostileLayer(f"negative pax {key}")
                setattr(entry, key, number)
            elif key == "mtime":
                try:
                    entry.mtime = float(value)
                except ValueError:
                    raise HostileLayer(f"bad pax mtime {value[:20]!r}") from None
            elif key.startswith("SCHILY.xattr."):
                entry.xattrs[key[len("SCHILY.xattr."):]] = value
            elif key.startswith("GNU.sparse."):
                raise HostileLayer("sparse files are not supported in a layer")
