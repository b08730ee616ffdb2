"""The runtime's persisted records, their storage, and the in-memory indexes over them."""

from cri.state.ids import new_id, valid_id
from cri.state.index import Index, NameRegistry
from cri.state.store import RecordStore

__all__ = [
    "Index",
    "NameRegistry",
    "RecordStore",
    "new_id",
    "valid_id",
]
