"""Overlay mounts of layer directories: the writable root of a container, or a read-only image volume.

Lower directories are given by path; when their absolute paths overflow the one-page mount option limit
(hundreds of layers), the mount is made by mount(8) running in their common directory with relative names.
With an id map, each lower directory is replaced by an idmapped clone attached below `attach_dir` only while the
overlay is mounted (see idmap.py); release_attached unmounts what a crash left there, and must succeed before
anyone deletes a tree holding it, since removing through an attached clone would delete the layer's files.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from hostos import libc
from storage import idmap as idmapping
from storage.errors import MountError
from storage.fsutil import remove_tree
from storage.idmap import IdMap

_MAX_OPTIONS = 4000  # the kernel copies one page of mount data
_MOUNT_TIMEOUT = 30.0


def mount_overlay(target: Path, options: str, relative_to: Path | None = None) -> None:
    """mount(2) directly; with `relative_to`, mount(8) run in that directory resolves the
    relative lower paths (the kernel resolves them against the caller's cwd, which a
    multi-threaded daemon cannot change)."""
    if relative_to is None:
        err = libc.mount("overlay", target, "overlay", 0, options)
        if err:
            raise MountError(f"mount overlay on {target}: {os.strerror(err)}")
        return
    try:
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], cwd=relative_to,
                              capture_output=True, text=True, timeout=_MOUNT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MountError(f"mount overlay on {target}: {exc}") from None
    if proc.returncode != 0:
        raise MountError(f"mount overlay on {target}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def unmount(target: Path) -> None:
    """Unmount `target`; nothing to do when it is not a mount point; lazily when it is busy."""
    err = libc.umount2(target)
    if err in (0, errno.EINVAL, errno.ENOENT, errno.ENOTDIR):  # not a mount point, or not even there
        return
    if err == errno.EBUSY:  # detach: the kernel finishes when the last user goes
        err = libc.umount2(target, libc.MNT_DETACH)
        if not err:
            return
    raise MountError(f"unmount {target}: {os.strerror(err)}")


def release_attached(attach_dir: Path) -> None:
    """Unmount and remove the idmapped clones attached below `attach_dir`; rmdir refuses a directory that is
    still a mount point, so a failure here stops whoever would delete the tree through it."""
    try:
        names = os.listdir(attach_dir)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        idmapping.detach(attach_dir / name)
        try:
            os.rmdir(attach_dir / name)
        except OSError as exc:
            raise MountError(f"removing {attach_dir / name}: {exc.strerror}") from None
    os.rmdir(attach_dir)


def mount_layers(target: Path, lowers: list[Path], *, upper: Path | None, work: Path | None,
                 idmap: IdMap | None = None, attach_dir: Path | None = None) -> None:
    """Mount an overlay of `lowers` (top first) on `target`: writable with `upper` and `work`, else read-only.
    With `idmap`, the lowers are seen through it (clones attached below `attach_dir` meanwhile)."""
    if idmap is None:
        _mount(target, lowers, upper, work)
        return
    assert attach_dir is not None
    attach_dir.mkdir(exist_ok=True)
    try:
        with idmapping.user_namespace(idmap) as userns:
            for n, source in enumerate(lowers):
                (attach_dir / str(n)).mkdir()
                idmapping.attach_idmapped(source.resolve(), attach_dir / str(n), userns)
        _mount(target, [attach_dir / str(n) for n in range(len(lowers))], upper, work)
    finally:
        release_attached(attach_dir)  # overlay holds its own clones of the layers


def _mount(target: Path, lowers: list[Path], upper: Path | None, work: Path | None) -> None:
    def options(names: list[str]) -> str:
        return f"lowerdir={':'.join(names)}" + (f",upperdir={upper},workdir={work}" if upper else "")

    text = options([str(p) for p in lowers])
    relative_to = None
    if len(text) > _MAX_OPTIONS:
        relative_to = lowers[0].parent
        text = options([p.name for p in lowers])
    mount_overlay(target, text, relative_to)


def idmap_problem(scratch: Path) -> str | None:
    """Why overlays on idmapped layers cannot be built on this kernel and the filesystem of `scratch` (a path that
    may be created and removed), or None: checked by the real thing, once per caller."""
    problem = idmapping.kernel_problem(os.uname().release)
    if problem:
        return problem
    _release_probe(scratch)  # what a crash in an earlier probe left
    want = IdMap(uid=65536 * 7, gid=65536 * 7 + 1, length=1)
    try:
        for sub in ("layer", "upper", "work", "merged"):
            (scratch / sub).mkdir(parents=True)
        (scratch / "layer" / "file").touch()
        mount_layers(scratch / "merged", [scratch / "layer"], upper=scratch / "upper", work=scratch / "work",
                     idmap=want, attach_dir=scratch / "lower")
        st = os.stat(scratch / "merged" / "file")
        if (st.st_uid, st.st_gid) != (want.uid, want.gid):
            return f"an overlay on an idmapped layer shows {st.st_uid}:{st.st_gid}, not {want.uid}:{want.gid}"
        return None
    except MountError as exc:
        return f"cannot build an overlay on idmapped layers under {scratch.parent}: {exc}"
    finally:
        _release_probe(scratch)


def _release_probe(scratch: Path) -> None:
    if not os.path.lexists(scratch):
        return
    unmount(scratch / "merged")
    release_attached(scratch / "lower")
    remove_tree(scratch)

