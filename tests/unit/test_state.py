import pytest
from pydantic import BaseModel

from cri.errors import AlreadyExists, InvalidArgument, NotFound
from cri.state import Index, NameRegistry, RecordStore, new_id, valid_id


class Rec(BaseModel):
    id: str
    name: str


def test_ids_are_64_hex_and_unique():
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(valid_id(i) for i in ids)
    assert not valid_id("A" * 64)
    assert not valid_id("a" * 63)
    assert not valid_id("../" + "a" * 61)


def test_index_finds_by_unique_prefix_and_rejects_ambiguous():
    idx = Index("container")
    a, b = "abc" + "0" * 61, "abd" + "0" * 61
    idx.add(a, "A")
    idx.add(b, "B")
    assert idx.get(a) == "A"
    assert idx.get("abc") == "A"
    assert idx.get("abd0") == "B"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        idx.get("ab")
    with pytest.raises(NotFound, match="container 'ff' not found"):
        idx.get("ff")
    assert idx.find("") is None
    idx.remove(a)
    assert idx.get("ab") == "B"
    assert len(idx) == 1 and list(idx) == ["B"]


def test_name_registry_names_the_holder():
    names = NameRegistry("pod sandbox")
    names.reserve("web_default_uid_0", "id1")
    names.reserve("web_default_uid_0", "id1")  # the holder may reserve again
    with pytest.raises(AlreadyExists, match="reserved for id1"):
        names.reserve("web_default_uid_0", "id2")
    names.release("web_default_uid_0", "id2")  # not the holder: no effect
    assert names.holder("web_default_uid_0") == "id1"
    names.release("web_default_uid_0")
    names.reserve("web_default_uid_0", "id2")


def test_record_store_round_trips_and_replaces_atomically(tmp_path):
    store = RecordStore(tmp_path / "recs", Rec)
    r = Rec(id=new_id(), name="one")
    store.save(r)
    store.save(r.model_copy(update={"name": "two"}), durable=False)
    loaded = store.load_all()
    assert loaded == [Rec(id=r.id, name="two")]
    assert [p.name for p in (tmp_path / "recs").iterdir()] == [f"{r.id}.json"]
    store.delete(r.id)
    store.delete(r.id)
    assert store.load_all() == []


def test_record_store_sets_aside_corrupt_records_and_removes_temp_files(tmp_path):
    store = RecordStore(tmp_path, Rec)
    good = Rec(id=new_id(), name="ok")
    store.save(good)
    (tmp_path / f"{new_id()}.json").write_text('{"id": "trunc')
    (tmp_path / ".x.json.tmp123").write_text("partial")
    assert store.load_all() == [good]
    assert len(list(tmp_path.glob("*.corrupt"))) == 1
    assert not list(tmp_path.glob(".*.tmp*"))
