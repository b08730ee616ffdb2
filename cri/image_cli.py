"""`pycri image import FILE` and `pycri image ls`: work on the image store directly, for loading
images onto a node without a registry (what `kind load` does with `ctr images import`).

They open the store the daemon uses, holding the daemon's root lock meanwhile: with a running
daemon they refuse (two processes sweeping one store would delete each other's blobs).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def _store(args) -> Iterator:
    from cri.cli import _config_from
    from cri.daemon import DaemonError, lock_root, open_image_store

    config = _config_from(args)
    config.root.mkdir(parents=True, exist_ok=True)
    try:
        fd = lock_root(config.root)
        store = open_image_store(config)
    except DaemonError as exc:
        raise SystemExit(f"pycri image: {exc}") from None
    try:
        yield store
    finally:
        os.close(fd)


def _import(args) -> int:
    from storage.errors import StorageError
    with _store(args) as store:
        try:
            records = store.import_archive(Path(args.file), pin=args.pin)
        except StorageError as exc:
            print(f"pycri image import: {exc}", file=sys.stderr)
            return 1
    for record in records:
        print(f"{record.id} {' '.join(record.repo_tags) or '<untagged>'}{' (pinned)' if record.pinned else ''}")
    return 0


def _ls(args) -> int:
    with _store(args) as store:
        records = store.list()
    rows = sorted(((name, record) for record in records for name in record.repo_tags or ["<none>"]), key=lambda row: row[0])
    print(f"{'IMAGE':60} {'ID':19} {'SIZE':>10} PINNED")
    for name, record in rows:
        print(f"{name:60} {record.id[7:19]:19} {_human(record.size):>10} {'yes' if record.pinned else ''}".rstrip())
    return 0


def _human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f}{unit}" if unit != "B" else f"{size}B"
        size /= 1000
    return f"{size}"


def register(subparsers: argparse._SubParsersAction) -> None:
    from cri.cli import _add_config_flags

    image = subparsers.add_parser("image", help="manage the image store directly (daemon stopped)")
    commands = image.add_subparsers(dest="image_command", required=True)
    importer = commands.add_parser("import", help="load an OCI layout or docker-archive tarball")
    importer.add_argument("file", help="OCI layout directory or tarball, or a `docker save` tarball")
    importer.add_argument("--pin", action="store_true",
                          help="pin the imported images: reported pinned, so kubelet's image GC never removes them")
    _add_config_flags(importer)
    importer.set_defaults(func=_import)
    lister = commands.add_parser("ls", help="list images")
    _add_config_flags(lister)
    lister.set_defaults(func=_ls)
