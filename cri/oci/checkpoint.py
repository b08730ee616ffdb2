"""The checkpoint archive, in the layout CRI-O writes and checkpointctl reads (kubelet's forensic checkpoints):

    checkpoint/       CRIU's image files (`runtime checkpoint --image-path`)
    config.dump       the container: id, name, image, runtime, created and checkpointed times (JSON)
    spec.dump         its OCI runtime spec (JSON)
    rootfs-diff.tar   what it changed in its root filesystem, as an OCI layer (.wh. whiteouts)
    deleted.files     the paths it deleted from the image (JSON list)
    dump.log, stats-dump  CRIU's log and statistics, when it wrote them

An uncompressed tar, written to a temporary file beside `location` and renamed, so a failure leaves no half
archive.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tarfile

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
CRIU_FILES = ("dump.log", "stats-dump")
_OPAQUE_XATTR = "trusted.overlay.opaque"


def config_dump(container_id: str, name: str, image: str, image_ref: str, runtime: str, created_ns: int,
                now: datetime | None = None) -> dict[str, Any]:
    """config.dump's fields, named as CRI-O names them."""
    def rfc3339(moment: datetime) -> str:
        return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return {"id": container_id, "name": name, "rootfsImage": image, "rootfsImageRef": image_ref,
            "rootfsImageName": image, "runtime": runtime,
            "createdTime": rfc3339(datetime.fromtimestamp(created_ns / 1e9, timezone.utc)),
            "checkpointedTime": rfc3339(now or datetime.now(timezone.utc))}


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def write_rootfs_diff(upper: Path, target: Path) -> list[str]:
    """Tar the overlay upper dir as an OCI layer; return the deleted paths (its whiteouts), absolute."""
    import tarfile  # (here and below) at the first checkpoint or restore: 0.3 MB an idle daemon does not need

    deleted: list[str] = []
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(upper):
            dirnames.sort()
            here = Path(dirpath)
            rel_dir = here.relative_to(upper)
            if here != upper:
                tar.add(here, arcname=str(rel_dir), recursive=False)
                try:
                    if os.getxattr(here, _OPAQUE_XATTR, follow_symlinks=False) == b"y":
                        tar.addfile(_empty(rel_dir / ".wh..wh..opq"))
                except OSError:
                    pass
            for name in sorted(filenames) + [d for d in dirnames if os.path.islink(here / d)]:
                path = here / name
                st = os.lstat(path)
                if _is_whiteout(st):
                    tar.addfile(_empty(rel_dir / f".wh.{name}"))
                    deleted.append("/" + str(rel_dir / name).lstrip("./"))
                else:
                    tar.add(path, arcname=str(rel_dir / name), recursive=False)
    return sorted(deleted)


def _empty(name: Path) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(str(name))
    info.mode = 0o600
    return info


def write_archive(location: Path, work: Path, *, config: dict[str, Any], spec: dict[str, Any], upper: Path) -> None:
    """Write the archive of the CRIU images in work/checkpoint, the container's config and spec, and its rootfs
    changes in `upper`, to `location`."""
    import tarfile

    (work / CONFIG_DUMP).write_text(json.dumps(config))
    (work / SPEC_DUMP).write_text(json.dumps(spec))
    deleted = write_rootfs_diff(upper, work / ROOTFS_DIFF)
    if deleted:
        (work / DELETED_FILES).write_text(json.dumps(deleted))
    members = [CONFIG_DUMP, SPEC_DUMP, ROOTFS_DIFF, CHECKPOINT_DIR,
               *(name for name in (DELETED_FILES, *CRIU_FILES) if (work / name).exists())]
    location.parent.mkdir(parents=True, exist_ok=True)
    tmp = location.with_name(f".{location.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in members:
                tar.add(work / name, arcname=name)
        os.chmod(tmp, 0o600)
        os.replace(tmp, location)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_archive(path: str) -> bool:
    """Whether `path` names a checkpoint archive (a tar holding config.dump and spec.dump)."""
    if not path.startswith("/") or not os.path.isfile(path):
        return False
    import tarfile

    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
    except (tarfile.TarError, OSError):
        return False
    return {CONFIG_DUMP, SPEC_DUMP} <= names
