"""Atomic persistence of pydantic records: one JSON file per object, replaced by rename.

A reader sees the old record or the new one, never a torn one. `durable=True` adds an fsync of
the file and its directory, which survives power loss; without it a write still survives a
killed daemon (the page cache outlives the process), which is the crash the runtime must
handle on every call, so the hot path can skip the disk flush where the caller allows.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that no reader ever sees a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_json(path: Path, obj: object, *, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode(), durable=durable)


class RecordStore(Generic[M]):
    """Records of one kind under `directory`, named `<id>.json`."""

    def __init__(self, directory: Path, model: type[M]):
        self.directory = Path(directory)
        self.model = model
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, record_id: str) -> Path:
        return self.directory / f"{record_id}.json"

    def save(self, record: M, *, durable: bool = True) -> None:
        atomic_write_bytes(self.path(record.id), record.model_dump_json().encode(), durable=durable)

    def delete(self, record_id: str) -> None:
        self.path(record_id).unlink(missing_ok=True)

    def load_all(self) -> list[M]:
        """Every readable record; unreadable ones (power loss, bad edits) are set aside, not fatal."""
        records = []
        for entry in sorted(self.directory.glob("*.json")):
            try:
                records.append(self.model.model_validate_json(entry.read_bytes()))
            except (OSError, ValidationError, ValueError) as e:
                bad = entry.with_suffix(".corrupt")
                log.error("record %s is unreadable (%s); moved aside to %s", entry, e, bad.name)
                entry.replace(bad)
        for tmp in self.directory.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
        return records
