"""`pycri image import FILE|-` and `pycri image ls`: load images onto a node without a registry (what
`kind load` does with `ctr images import`), and list them.

With the daemon running they go through its admin socket, so the running store takes the images at once.
With it stopped they open the store directly, holding the daemon's root lock meanwhile (two processes
sweeping one store would delete each other's blobs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
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


def _through_daemon(args, op: str, **kwargs):
    """The daemon's answer, or None when no daemon runs on this root (then the store is ours to open)."""
    from cri.admin.client import AdminError, NotRunning, request
    from cri.cli import _config_from

    config = _config_from(args)
    try:
        return request(config.admin_socket_path, op, root=str(config.root), **kwargs)
    except NotRunning:
        return None
    except AdminError as exc:
        raise SystemExit(f"pycri image {args.image_command}: {exc}") from None


def _import(args) -> int:
    path = None if args.file == "-" else Path(args.file)
    if path is not None and not path.exists():
        raise SystemExit(f"pycri image import: {path}: no such file or directory")
    if path is None:
        answer = _through_daemon(args, "import", body=sys.stdin.buffer, pin=args.pin)
    elif path.is_dir():
        answer = _through_daemon(args, "import", body=path, pin=args.pin)
    else:
        with open(path, "rb") as archive:
            answer = _through_daemon(args, "import", body=archive, pin=args.pin)
    if answer is None:
        answer = _import_offline(args, path)
    for image in answer:
        print(f"{image['id']} {' '.join(image['repo_tags']) or '<untagged>'}{' (pinned)' if image['pinned'] else ''}")
    return 0


def _import_offline(args, path: Path | None) -> list[dict]:
    from storage.errors import StorageError

    with _store(args) as store, tempfile.TemporaryDirectory(dir=store.root) as spool:
        if path is None:  # stdin: spooled, since an archive is read out of order
            path = Path(spool) / "stdin.tar"
            with open(path, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        try:
            records = store.import_archive(path, pin=args.pin)
        except StorageError as exc:
            raise SystemExit(f"pycri image import: {exc}") from None
    return [{"id": r.id, "repo_tags": r.repo_tags, "pinned": r.pinned} for r in records]


def _ls(args) -> int:
    images = _through_daemon(args, "images")
    if images is None:
        with _store(args) as store:
            images = [{**r.model_dump(mode="json"), "pinned": r.pinned} for r in store.list()]
    rows = sorted(((name, image) for image in images for name in image["repo_tags"] or ["<none>"]),
                  key=lambda row: row[0])
    print(f"{'IMAGE':60} {'ID':19} {'SIZE':>10} PINNED")
    for name, image in rows:
        pinned = "yes" if image["pinned"] else ""
        print(f"{name:60} {image['id'][7:19]:19} {_human(image['size']):>10} {pinned}".rstrip())
    return 0


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f}{unit}" if unit != "B" else f"{size}B"
        size /= 1000
    return f"{size}"


def register(subparsers: argparse._SubParsersAction) -> None:
    from cri.cli import _add_config_flags

    image = subparsers.add_parser("image", help="import and list images (through the running daemon, else directly)")
    commands = image.add_subparsers(dest="image_command", required=True)
    importer = commands.add_parser("import", help="load an OCI layout or docker-archive tarball")
    importer.add_argument("file", help="OCI layout directory or tarball, a `docker save` tarball, or - for a "
                          "tarball on standard input")
    importer.add_argument("--pin", action="store_true",
                          help="pin the imported images: reported pinned, so kubelet's image GC never removes them")
    _add_config_flags(importer)
    importer.set_defaults(func=_import)
    lister = commands.add_parser("ls", help="list images")
    _add_config_flags(lister)
    lister.set_defaults(func=_ls)
