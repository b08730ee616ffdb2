"""Paths inside a container rootfs, resolved as the container would see them.

An image is untrusted: its /etc/passwd may be a symlink to /etc/shadow of the host, its volume paths may climb out
with "..". Every lookup here resolves symlinks against the rootfs as the root directory, so a result never leaves it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_MAX_SYMLINKS = 255


class RootfsPathError(Exception):
    """A path inside the rootfs cannot be resolved (a symlink loop or a non-directory on the way)."""


def secure_join(root: Path | str, unsafe_path: str) -> Path:
    """Join ``unsafe_path`` to ``root`` resolving every symlink as if ``root`` were "/".

    Components that do not exist are kept as they are, so the result can name a file to be created.
    """
    root = Path(root)
    pending = [part for part in unsafe_path.split("/") if part]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a symlink, or missing: keep the name
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise RootfsPathError(f"too many symlinks resolving {unsafe_path!r}")
        if target.startswith("/"):
            resolved = []
        rest = [p for p in target.split("/") if p]
        pending.extend(reversed(rest))
    return root.joinpath(*resolved)


def read_rootfs_file(root: Path | str, path: str, max_bytes: int = 4 << 20) -> str | None:
    """Text of a regular file inside the rootfs, or None when it is absent; never follows a link out of ``root``."""
    target = secure_join(root, path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise RootfsPathError(f"cannot open {path} in the rootfs: {err}") from err
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, max_bytes)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def ensure_rootfs_dir(root: Path | str, path: str) -> Path:
    """Create a directory inside the rootfs (an image VOLUME) without escaping it; return its host path."""
    target = secure_join(root, path)
    os.makedirs(target, mode=0o755, exist_ok=True)
    return target


def ensure_mount_points(root: Path | str, mounts: list[dict[str, Any]]) -> None:
    """Create the missing targets of a spec's mounts (a file for a file bind mount, else a directory) as host
    root, for a runtime that mounts from inside a user namespace where it may not write the image's dirs."""
    for mount in mounts:
        target = secure_join(root, mount["destination"])
        if os.path.lexists(target):
            continue
        source = mount.get("source", "")
        if mount.get("type") == "bind" and os.path.isfile(source):
            os.makedirs(target.parent, mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        else:
            os.makedirs(target, mode=0o755, exist_ok=True)
