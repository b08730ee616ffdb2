"""CNI configuration loading: lexical order, invalid files skipped, .conf promoted to a one-plugin list."""

import json

import pytest

from netplugins.config import ConfigWatcher, InvalidNetworkConfig, load_networks, parse_network


def write(d, name, data):
    (d / name).write_text(data if isinstance(data, str) else json.dumps(data))


def conflist(name, *types):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": t} for t in types]}


def test_first_valid_file_in_lexical_order_is_the_default(tmp_path):
    write(tmp_path, "20-b.conflist", conflist("b", "bridge"))
    write(tmp_path, "10-a.conflist", conflist("a", "bridge", "portmap"))
    write(tmp_path, "05-broken.conflist", "{nope")
    write(tmp_path, "01-empty.conflist", conflist("empty"))
    write(tmp_path, "00-notes.txt", conflist("ignored", "bridge"))
    networks = load_networks(tmp_path)
    assert [n.name for n in networks] == ["a", "b"]
    assert [p["type"] for p in networks[0].plugins] == ["bridge", "portmap"]


def test_single_plugin_conf_becomes_a_list():
    net = parse_network({"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "br9"})
    assert net.cni_version == "0.4.0"
    assert net.plugins == ({"type": "bridge", "bridge": "br9"},)


@pytest.mark.parametrize("data, reason", [
    ([], "not a JSON object"),
    ({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}, "name"),
    ({"cniVersion": "1.0.0", "name": "../x", "plugins": [{"type": "bridge"}]}, "name"),
    ({"cniVersion": "one", "name": "x", "plugins": [{"type": "bridge"}]}, "cniVersion"),
    ({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}, "type"),
    ({"cniVersion": "1.0.0", "name": "x", "plugins": ["bridge"]}, "not an object"),
    ({"cniVersion": "1.0.0", "name": "x", "plugins": {}}, "non-empty list"),
])
def test_invalid_documents_say_why(data, reason):
    with pytest.raises(InvalidNetworkConfig, match=reason):
        parse_network(data)


def test_missing_directory_has_no_networks(tmp_path):
    assert load_networks(tmp_path / "absent") == []


def test_watcher_sees_new_changed_and_removed_files(tmp_path):
    seen = []
    watcher = ConfigWatcher(tmp_path, lambda nets: seen.append([n.name for n in nets]))
    assert watcher.poll() and seen == [[]]
    assert not watcher.poll()
    write(tmp_path, "10-a.conflist", conflist("a", "bridge"))
    assert watcher.poll() and seen[-1] == ["a"]
    write(tmp_path, "10-a.conflist", conflist("renamed-and-longer", "bridge"))
    assert watcher.poll() and seen[-1] == ["renamed-and-longer"]
    (tmp_path / "10-a.conflist").unlink()
    assert watcher.poll() and seen[-1] == []
