"""The ADD result cache: round trip, lookup by container, idempotent delete, hostile keys."""

import pytest

from netplugins.cache import ResultCache


def test_round_trip_find_and_delete(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    assert cache.load("net", "c1", "eth0") is None and cache.find("c1", "eth0") == []
    cache.save("net", "c1", "eth0", {"result": {"ips": []}})
    cache.save("other", "c1", "eth0", {"result": {}})
    cache.save("net", "c2", "eth0", {"result": {}})
    assert cache.load("net", "c1", "eth0")["result"] == {"ips": []}
    assert len(cache.find("c1", "eth0")) == 2
    cache.delete("net", "c1", "eth0")
    cache.delete("net", "c1", "eth0")
    assert cache.load("net", "c1", "eth0") is None
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_corrupt_entry_reads_as_missing(tmp_path):
    cache = ResultCache(tmp_path)
    (tmp_path / "net-c1-eth0.json").write_text("{torn")
    assert cache.load("net", "c1", "eth0") is None and cache.find("c1", "eth0") == []


@pytest.mark.parametrize("key", ["../x", "a/b", "", ".hidden"])
def test_hostile_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        ResultCache(tmp_path).save(key, "c1", "eth0", {})


def test_entries_lists_every_readable_entry_and_skips_torn_or_foreign_ones(tmp_path):
    """The sweep at start DELs what entries() returns: it must name only entries we wrote, with usable keys."""
    cache = ResultCache(tmp_path)
    assert cache.entries() == []
    for network, cid in (("net", "c1"), ("other", "c1"), ("net", "c2")):
        cache.save(network, cid, "eth0", {"containerId": cid, "ifName": "eth0", "networkName": network})
    (tmp_path / "net-c3-eth0.json").write_text("{torn")
    (tmp_path / "net-c4-eth0.json").write_text('{"kind": "somethingElse", "containerId": "c4"}')
    cache.save("net", "c5", "eth0", {"containerId": "../c5", "ifName": "eth0", "networkName": "net"})
    assert sorted((e["networkName"], e["containerId"]) for e in cache.entries()) == [
        ("net", "c1"), ("net", "c2"), ("other", "c1")]
