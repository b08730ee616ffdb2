"""Layer unpacking: a (gzip|zstd|plain) tar stream into a directory, in overlayfs form, safely.

Every entry is created relative to a directory fd that was reached from the layer root one
component at a time with O_NOFOLLOW, so no symlink (in the layer or planted by an earlier entry)
is ever followed out of the root; '..' components are refused and absolute names are taken as
relative to the root. Whiteouts become what overlayfs reads: `.wh.NAME` a 0/0 character device,
`.wh..wh..opq` the trusted.overlay.opaque=y xattr on its directory. Overlay xattrs coming from the
layer itself are dropped (they could redirect lookups outside the layer). Sizes are capped: the
decompressed stream, the entry count, the directory depth, and metadata records (tarstream.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from storage.errors import HostileLayer
from storage.tarstream import (BLOCKDEV, CHAR, DIRECTORY, FIFO, HARDLINK, REGULAR, SYMLINK, TarEntry,
                               TarStream)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_MAX_PATH = 4096
_COPY_CHUNK = 256 << 10  # bigger buys no speed here and costs memory per parallel layer
_THREADED_GZIP_FROM = 1 << 20
# failures of this host (not of the layer's content), reported as they are
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
_MAX_DEPTH = 80  # directories deep; real layers stay far below, and each level holds an fd while cached
_MAX_CACHED_DIRS = 2 * _MAX_DEPTH + 8  # room for two full paths after a drop (hardlink source and target)
_NODE_KINDS = {CHAR: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 64 << 30      # decompressed tar stream of one layer
    max_entries: int = 10_000_000  # tar entries in one layer


@dataclass(frozen=True)
class LayerStats:
    diff_id: str   # sha256 of the uncompressed tar, as the image config lists it
    size: int      # bytes of the uncompressed tar


class _CountingReader:
    """Hashes and counts the decompressed stream, and stops it at the size cap."""

    def __init__(self, raw: BinaryIO, limit: int):
        self.raw = raw
        self.limit = limit
        self.hasher = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else _COPY_CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise HostileLayer(f"layer expands beyond {self.limit} bytes")
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass


def open_decompressed(path: Path) -> BinaryIO:
    """The layer's tar stream, decompressed according to its magic bytes (media types lie)."""
    f = open(path, "rb")
    try:
        magic = f.read(4)
        f.seek(0)
        if magic.startswith(GZIP_MAGIC):
            # ISA-L inflate: 2.4x zlib here; in its own thread (3x) when the layer is big enough
            # to repay starting one. Measured figures are in bench/pull.py's docstring.
            big = os.fstat(f.fileno()).st_size >= _THREADED_GZIP_FROM
            f.close()
            if big:
                from isal import igzip_threaded
                threaded: BinaryIO = igzip_threaded.open(path, "rb", threads=1, block_size=_COPY_CHUNK)
                return threaded
            from isal import igzip
            inflated: BinaryIO = igzip.open(path, "rb")
            return inflated
        if magic == ZSTD_MAGIC:
            import zstandard
            return zstandard.ZstdDecompressor().stream_reader(f, read_size=_COPY_CHUNK, closefd=True)
        return f
    except BaseException:
        f.close()
        raise


def _components(name: str, what: str) -> list[str]:
    """Split a tar name into path components under the layer root; '..' is hostile."""
    if len(name) > _MAX_PATH or "\x00" in name:
        raise HostileLayer(f"{what} {name[:100]!r}: invalid or too long")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileLayer(f"{what} {name!r} contains '..'")
    return parts


class _Extractor:
    def __init__(self, root: Path):
        self.root_fd = os.open(root, _DIR_FLAGS)
        self._dirs: dict[tuple[str, ...], int] = {}  # open directory fds by path, reused across entries
        self._deferred_dirs: list[tuple[tuple[str, ...], TarEntry]] = []

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    def _drop_cache(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _dir_fd(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An fd of directory root/parts, each component opened with O_NOFOLLOW from its parent's
        fd, so no symlink is ever followed. Owned by the cache: callers do not close it."""
        if not parts:
            return self.root_fd
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        if len(parts) > _MAX_DEPTH:
            raise HostileLayer(f"path {'/'.join(parts[:8])}/... is deeper than {_MAX_DEPTH} directories")
        if len(self._dirs) >= _MAX_CACHED_DIRS:
            self._drop_cache()
        parent = self._dir_fd(parts[:-1], create=create)
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise HostileLayer(f"{'/'.join(parts)!r} does not exist in the layer") from None
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise HostileLayer(f"path {'/'.join(parts)!r} goes through a symlink or a non-directory") from None
            raise
        self._dirs[parts] = fd
        return fd

    def _clear(self, parent: int, name: str, *, keep_dir: bool) -> bool:
        """Remove what an earlier entry put at `name` (a later entry wins); True if a directory
        was kept because the new entry is a directory too."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._drop_cache()  # cached fds may be inside the tree we delete
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    def _make(self, parent_parts: tuple[str, ...], name: str, create: Callable[[int], object], *,
              keep_dir: bool = False) -> tuple[int, object]:
        """create(parent_fd) makes `name`; when an earlier entry is in the way it is removed and
        create runs again (no lstat per entry: collisions are rare). Returns the parent fd and
        what create returned, or None when an existing directory was kept."""
        parent = self._dir_fd(parent_parts, create=True)
        try:
            return parent, create(parent)
        except FileExistsError:
            if self._clear(parent, name, keep_dir=keep_dir):
                return parent, None
        parent = self._dir_fd(parent_parts, create=True)  # the cache may have been dropped
        return parent, create(parent)

    def entry(self, tar: TarStream, member: TarEntry) -> None:
        parts = _components(member.name, "entry")
        if not parts:
            if member.kind == DIRECTORY:
                self._deferred_dirs.append(((), member))  # "./": the layer root's own metadata
            return
        parent_parts, name = tuple(parts[:-1]), parts[-1]
        if name == OPAQUE_MARKER:
            os.setxattr(self._dir_fd(parent_parts, create=True), OPAQUE_XATTR, b"y")
            return
        if name.startswith(WHITEOUT_PREFIX):
            if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                return  # other aufs metadata (.wh..wh.plnk and the like) means nothing to overlayfs
            target = name[len(WHITEOUT_PREFIX):]
            self._make(parent_parts, target,
                       lambda fd: os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd))
            return
        if member.kind == DIRECTORY:
            self._make(parent_parts, name, lambda fd: os.mkdir(name, 0o700, dir_fd=fd), keep_dir=True)
            self._deferred_dirs.append((tuple(parts), member))
        elif member.kind == REGULAR:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            _, fd = self._make(parent_parts, name, lambda fd: os.open(name, flags, 0o600, dir_fd=fd))
            assert isinstance(fd, int)
            self._regular(tar, member, fd)
        elif member.kind == HARDLINK:
            link_parts = _components(member.linkname, "hardlink target")
            if not link_parts:
                raise HostileLayer(f"hardlink {member.name!r} points at the layer root")
            link_dir = tuple(link_parts[:-1])

            def link(fd: int) -> None:
                source = self._dir_fd(link_dir, create=False)
                fd = self._dir_fd(parent_parts, create=True)  # again: fetching `source` may drop the cache
                os.link(link_parts[-1], name, src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)

            try:
                self._make(parent_parts, name, link)
            except FileNotFoundError:
                raise HostileLayer(f"hardlink {member.name!r} -> {member.linkname!r}: "
                                   f"target not in this layer") from None
            except (PermissionError, IsADirectoryError):
                raise HostileLayer(f"hardlink {member.name!r} -> {member.linkname!r}: target is a directory") from None
            # a hard link shares the target's inode and metadata
        elif member.kind == SYMLINK:
            parent, _ = self._make(parent_parts, name, lambda fd: os.symlink(member.linkname, name, dir_fd=fd))
            self._metadata_at(parent, name, member)
        elif member.kind in _NODE_KINDS:
            kind = _NODE_KINDS[member.kind]
            device = os.makedev(member.devmajor, member.devminor) if member.kind != FIFO else 0
            parent, _ = self._make(parent_parts, name,
                                   lambda fd: os.mknod(name, kind | (member.mode & 0o7777), device, dir_fd=fd))
            self._metadata_at(parent, name, member)
        else:
            raise HostileLayer(f"entry {member.name!r} has unsupported tar type {member.kind!r}")

    def _regular(self, tar: TarStream, member: TarEntry, fd: int) -> None:
        """Fill the new file `fd` (and close it) with the member's data and metadata."""
        try:
            remaining = member.size
            while remaining > 0:
                chunk = tar.read(min(remaining, _COPY_CHUNK))
                if not chunk:
                    raise HostileLayer(f"entry {member.name!r} is truncated")
                remaining -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            _metadata_of_fd(fd, member)
        finally:
            os.close(fd)

    def _metadata_at(self, parent: int, name: str, member: TarEntry) -> None:
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if member.kind != SYMLINK:
            os.chmod(name, member.mode & 0o7777, dir_fd=parent)
        for key, value in _xattrs(member):
            _set_xattr(f"/proc/self/fd/{parent}/{name}", key, value, follow_symlinks=False)
        os.utime(name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directory metadata last, deepest first, so writing children does not disturb mtimes.

        A later entry may have replaced a directory with a symlink or a file, or removed it: each is reopened
        with O_NOFOLLOW | O_DIRECTORY, so metadata never lands on what a link points at (possibly a host file).
        """
        for parts, member in reversed(self._deferred_dirs):
            fd = self._reopen_dir(parts)
            if fd is None:
                continue  # no longer a directory: the entry that replaced it carried its own metadata
            try:
                _metadata_of_fd(fd, member)
            finally:
                os.close(fd)

    def _reopen_dir(self, parts: tuple[str, ...]) -> int | None:
        """A new fd of directory root/parts, or None when that path no longer leads to a directory."""
        if not parts:
            return os.dup(self.root_fd)
        try:
            parent = self._dir_fd(parts[:-1], create=False)
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except HostileLayer:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise


def _metadata_of_fd(fd: int, member: TarEntry) -> None:
    os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
    for key, value in _xattrs(member):
        _set_xattr(fd, key, value)
    os.utime(fd, ns=(_ns(member.mtime), _ns(member.mtime)))


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)


def _xattrs(member: TarEntry) -> list[tuple[str, bytes]]:
    return [(key, value) for key, value in member.xattrs.items() if not key.startswith(_FORBIDDEN_XATTR_PREFIXES)]


def _set_xattr(target: int | str | os.PathLike[str], key: str, value: bytes, *, follow_symlinks: bool = True) -> None:
    try:
        os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise


def unpack_layer(blob: Path, dest: Path, limits: UnpackLimits = UnpackLimits()) -> LayerStats:
    """Extract the layer in file `blob` into the empty directory `dest`; returns its diff id.
    On error `dest` holds a partial tree that the caller deletes."""
    raw = open_decompressed(blob)
    reader = _CountingReader(raw, limits.max_bytes)
    extractor = _Extractor(dest)
    tar = TarStream(reader)
    try:
        for count, member in enumerate(tar, 1):
            if count > limits.max_entries:
                raise HostileLayer(f"layer has more than {limits.max_entries} entries")
            try:
                extractor.entry(tar, member)
            except OSError as exc:
                if exc.errno in _HOST_ERRNOS:
                    raise
                raise HostileLayer(f"entry {member.name[:200]!r}: {exc.strerror or exc}") from None
            except OverflowError:
                raise HostileLayer(f"entry {member.name[:200]!r}: owner, mode or time out of range") from None
        extractor.finish()
        reader.drain()
    except HostileLayer:
        raise
    except EOFError as exc:
        raise HostileLayer(f"truncated compressed layer: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends: bad data, not a failed syscall
            raise HostileLayer(f"corrupt compressed layer: {exc}") from None
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise HostileLayer(f"corrupt zstd layer: {exc}") from None
        raise
    finally:
        extractor.close()
        raw.close()
    return LayerStats(f"sha256:{reader.hasher.hexdigest()}", reader.count)
