"""What goes when nothing needs it: the sweep of unreferenced blobs and layers (after a removal, a failed pull, at
start, on GC), and the check after an unclean shutdown."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from storage.content import ContentStore
from storage.fsutil import remove_tree
from storage.image_records import ImageRecords
from storage.layers import LayerStore
from storage.rootfs import RootfsManager

log = logging.getLogger("pycri.storage")


@dataclass
class GCReport:
    blobs_removed: list[str] = field(default_factory=list)
    layers_removed: list[str] = field(default_factory=list)


def _reclaim(path: Path) -> None:
    try:
        remove_tree(path)
    except OSError as exc:  # left for the sweep at the next start
        log.warning("deleting removed tree %s: %s", path, exc)


class Collector:
    def __init__(self, records: ImageRecords, content: ContentStore, layers: LayerStore, rootfs: RootfsManager,
                 background_reclaim: bool) -> None:
        self.records = records
        self.content = content
        self.layers = layers
        self.rootfs = rootfs
        self._reclaimer = ThreadPoolExecutor(1, thread_name_prefix="reclaim") if background_reclaim else None

    def _referenced(self) -> set[str]:
        used: set[str] = set(self.records.pins)
        for record in self.records.by_id.values():
            used.update(record.blobs)
            used.update(record.chain_ids)
        used.update(self.rootfs.referenced_chain_ids())
        return used

    def sweep(self, candidates: set[str]) -> GCReport:
        """Delete the blobs and layers among `candidates` that nothing references or pins."""
        report = GCReport()
        doomed: list[Path] = []
        with self.records.lock:
            used = self._referenced()
            for key in sorted(candidates - used):
                if self.content.has(key):
                    self.content.delete(key)
                    report.blobs_removed.append(key)
                path = self.layers.detach(key)
                if path is not None:
                    doomed.append(path)
                    report.layers_removed.append(key)
        for path in doomed:
            self.discard(path)
        return report

    def discard(self, path: Path) -> None:
        """Delete a tree already moved out of sight: in the reclaim thread if there is one, else now."""
        if self._reclaimer is not None:
            self._reclaimer.submit(_reclaim, path)
        else:
            remove_tree(path)

    def sweep_all(self) -> GCReport:
        return self.sweep(self.content.all_digests() | self.layers.all_chain_ids())

    def verify(self) -> list[str]:
        """After an unclean shutdown: drop blobs whose bytes no longer match their digest, layers
        without their metadata, and images missing any of what they need. Returns what it did."""
        done: list[str] = []
        with self.records.lock:
            for digest in sorted(self.content.all_digests()):
                if not self.content.verify(digest):
                    self.content.delete(digest)
                    done.append(f"removed blob {digest}: its bytes do not match the digest")
            for chain_id in sorted(self.layers.all_chain_ids()):
                if self.layers.get(chain_id) is None:
                    remove_tree(self.layers.path(chain_id))  # its short link dangles and goes at the next start
                    done.append(f"removed layer {chain_id}: its metadata is missing")
            for record in list(self.records.by_id.values()):
                missing = [b for b in record.blobs if not self.content.has(b)] + \
                          [c for c in record.chain_ids if self.layers.get(c) is None]
                if missing:
                    self.records.drop(record)
                    done.append(f"dropped image {record.id} ({', '.join(record.repo_tags) or 'untagged'}): "
                                f"missing {', '.join(missing)}; pull it again")
        self.sweep_all()
        return done
