"""Idmapped layers: the image's files seen through a user namespace's id mapping, for a container of a pod with its
own user namespace.

The layers on disk belong to host root. An overlay built on idmapped clones of its lower directories (kernel 5.19+;
overlayfs itself cannot be idmapped) shows them as the pod's root instead, as containerd 2 and CRI-O do. Each clone
is made with the new mount API: open_tree(OPEN_TREE_CLONE) detaches a copy of the layer's mount, mount_setattr
(MOUNT_ATTR_IDMAP) gives it the mapping of a user namespace, move_mount attaches it where the overlay's lowerdir
option can name it. overlayfs keeps private clones of its layers, so the attached ones are unmounted right after.
"""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hostos import libc
from storage.errors import MountError

IDMAPPED_LAYERS_KERNEL = (5, 19)  # overlayfs accepts idmapped lower layers from 5.19 on
_HOLDER_TIMEOUT = 10.0


@dataclass(frozen=True)
class IdMap:
    """One mapping for uids and one for gids, each from container id 0: what a pod user namespace has."""
    uid: int      # host uid of the pod's root
    gid: int      # host gid of the pod's root
    length: int   # ids mapped, the same for both

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "length": self.length}


@contextmanager
def user_namespace(idmap: IdMap) -> Iterator[int]:
    """An fd of a new user namespace with `idmap`'s mappings, made by a short-lived `unshare` holder; the fd
    keeps the namespace alive after the holder is gone."""
    argv = ["unshare", "--user", "--", "sh", "-c", "echo ready; exec cat"]
    try:
        holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except OSError as exc:
        raise MountError(f"starting `unshare` for an idmapped rootfs: {exc}") from None
    fd = -1
    try:
        assert holder.stdout is not None  # (PIPE)
        if holder.stdout.readline() != b"ready\n":
            holder.kill()
            err = holder.communicate(timeout=_HOLDER_TIMEOUT)[1].decode(errors="replace").strip()
            raise MountError(f"making a user namespace for an idmapped rootfs: {' '.join(argv[:3])} failed: "
                             f"{err or 'it exited at start'}")
        for name, host in (("uid_map", idmap.uid), ("gid_map", idmap.gid)):
            try:
                with open(f"/proc/{holder.pid}/{name}", "w") as f:
                    f.write(f"0 {host} {idmap.length}\n")
            except OSError as exc:
                raise MountError(f"writing the {name} of the idmapped rootfs' user namespace: {exc.strerror}") from None
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=_HOLDER_TIMEOUT)
    try:
        yield fd
    finally:
        os.close(fd)


def attach_idmapped(source: Path, target: Path, userns_fd: int) -> None:
    """Mount an idmapped clone of the directory `source` on the existing directory `target`."""
    try:
        libc.attach_idmapped_clone(source, target, userns_fd)
    except OSError as exc:
        raise MountError(exc.strerror) from None


def detach(target: Path) -> None:
    """Lazily unmount `target` if something is mounted there (nothing uses an attached clone but overlay's mount)."""
    err = libc.umount2(target, libc.MNT_DETACH)
    if err not in (0, errno.EINVAL, errno.ENOENT):
        raise MountError(f"unmount {target}: {os.strerror(err)}")


def kernel_problem(release: str) -> str | None:
    """Why this kernel (`uname -r`) cannot build an overlay on idmapped layers, or None."""
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return f"cannot read the kernel release {release!r}"
    if version < IDMAPPED_LAYERS_KERNEL:
        return (f"kernel {release} cannot build overlayfs on idmapped layers (needs "
                f"{'.'.join(map(str, IDMAPPED_LAYERS_KERNEL))} or later)")
    return None
