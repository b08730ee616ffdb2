"""Persistence of pydantic records: one JSON file per object, replaced atomically (hostos.atomicfile).

A reader sees the old record or the new one, never a torn one; `durable=False` skips the disk flush where
the caller allows (a killed daemon still finds the write: the page cache outlives the process).

The files are written by one worker thread per store, in the order of the calls: on a busy disk a write
(create, write, rename) took 1-2 ms, which the event loop spent blocked while List/Status calls waited. The
record is serialized in the caller, so the file holds the record as it was at the call. `save` and `delete`
return the write's future: a caller that must know the write is done (a removal's commit point, a creation
whose failure must fail the call) awaits it; the others go on, and a write a killed daemon never made is what
start-up reconciliation and the orphan sweeps already handle (as for a daemon killed just before the call).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

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
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"records-{self.directory.name}")

    def path(self, record_id: str) -> Path:
        return self.directory / f"{record_id}.json"

    def save(self, record: M, *, durable: bool = True) -> Future[None]:
        record_id: str = getattr(record, "id")  # noqa: B009  (every record model has one; M cannot say so)
        data = record.model_dump_json().encode()
        return self._submit(f"saving record {record_id}", atomicfile.atomic_write_bytes, self.path(record_id), data,
                            durable=durable)

    def delete(self, record_id: str) -> Future[None]:
        return self._submit(f"deleting record {record_id}", self.path(record_id).unlink, missing_ok=True)

    def flush(self) -> None:
        """Block until every write asked for so far is done (shutdown, tests)."""
        self._writer.submit(lambda: None).result()

    def _submit(self, what: str, write: Callable[..., None], *args: Any, **kwargs: Any) -> Future[None]:
        future = self._writer.submit(write, *args, **kwargs)

        def report(done: Future[None]) -> None:
            if done.exception() is not None:
                log.error("%s in %s: %s", what, self.directory, done.exception())

        future.add_done_callback(report)
        return future

    def load_all(self) -> list[M]:
        """Every readable record; unreadable ones (power loss, bad edits) are set aside, not fatal."""
        self.flush()
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
