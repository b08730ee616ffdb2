"""The runtime's persisted records, their atomic storage, and the in-memory indexes over them."""

from cri.state.ids import new_id, valid_id
from cri.state.index import Index, NameRegistry
from cri.state.store import RecordStore, atomic_write_bytes, atomic_write_json

__all__ = [
    "Index",
    "NameRegistry",
    "RecordStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "new_id",
    "valid_id",
]
