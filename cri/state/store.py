"""Persistence of pydantic records: one JSON file per object, replaced atomically (hostos.atomicfile).

A reader sees the old record or the new one, never a torn one; `durable=False` skips the disk flush where
the caller allows (a killed daemon still finds the write: the page cache outlives the process).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from hostos import atomicfile

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class RecordStore(Generic[M]):
    """Records of one kind under `directory`, named `<id>.json`."""

    def __init__(self, directory: Path, model: type[M]):
        self.directory = Path(directory)
        self.model = model
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, record_id: str) -> Path:
        return self.directory / f"{record_id}.json"

    def save(self, record: M, *, durable: bool = True) -> None:
        record_id: str = getattr(record, "id")  # noqa: B009  (every record model has one; M cannot say so)
        atomicfile.atomic_write_bytes(self.path(record_id), record.model_dump_json().encode(), durable=durable)

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
        for tmp in self.directory.glob(".*.tmp*"):  # a crash between write and rename (old and new names)
            tmp.unlink(missing_ok=True)
        return records
