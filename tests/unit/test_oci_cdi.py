"""CDI: names, spec files (JSON and YAML) in prioritised directories, resolution against host devices, and the
pure application of container edits to an OCI spec."""

import json
from pathlib import Path

import pytest

from cri.oci.cdi import CDIError, apply_edits, parse_name, requested_devices, resolve


def write(directory: Path, name: str, doc) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


NULLDEV = {"cdiVersion": "0.6.0", "kind": "example.test/null",
           "containerEdits": {"env": ["NULL_VENDOR=example"]},
           "devices": [{"name": "one", "containerEdits": {"deviceNodes": [{"path": "/dev/xnull", "hostPath": "/dev/null"}],
                                                          "env": ["WHICH=one"]}},
                       {"name": "two", "containerEdits": {"deviceNodes": [{"path": "/dev/xzero", "hostPath": "/dev/zero",
                                                                           "permissions": "rw"}],
                                                          "mounts": [{"hostPath": "/etc/os-release",
                                                                      "containerPath": "/etc/xnull/release",
                                                                      "options": ["ro", "nosuid"]}],
                                                          "hooks": [{"hookName": "createContainer", "path": "/bin/true",
                                                                     "args": ["true"], "timeout": 5}],
                                                          "additionalGids": [0, 44]}}]}


@pytest.mark.parametrize("name, ok", [("example.test/null=one", True), ("nvidia.com/gpu=0", True),
                                      ("nvidia.com/gpu=GPU-1:mig", True), ("example.test/null", False),
                                      ("null=one", False), ("example.test/a/b=one", False), ("example.test/null=", False)])
def test_parse_name(name, ok):
    if ok:
        assert parse_name(name)[1] == name.partition("=")[2]
    else:
        with pytest.raises(CDIError, match="not a fully qualified name"):
            parse_name(name)


def test_requested_devices_merge_the_field_and_annotations_once_each():
    annotations = {"cdi.k8s.io/b": "v.io/c=2, v.io/c=1", "cdi.k8s.io/a": "v.io/c=3", "other": "v.io/c=9"}
    assert requested_devices(["v.io/c=1"], annotations) == ["v.io/c=1", "v.io/c=3", "v.io/c=2"]


def test_resolve_fills_device_numbers_from_the_host_and_applies_the_spec_edits_once(tmp_path):
    write(tmp_path / "etc", "null.json", NULLDEV)
    edits = resolve(["example.test/null=one", "example.test/null=two"], [tmp_path / "etc", tmp_path / "run"])
    assert [e.env for e in edits] == [["NULL_VENDOR=example"], ["WHICH=one"], []]
    one = edits[1].device_nodes[0]
    assert (one.type, one.major, one.minor) == ("c", 1, 3)
    assert one.file_mode == (Path("/dev/null").stat().st_mode & 0o7777)
    assert (edits[2].device_nodes[0].major, edits[2].device_nodes[0].minor) == (1, 5)


def test_yaml_specs_and_a_later_directory_overrides_an_earlier_one(tmp_path):
    write(tmp_path / "etc", "null.json", NULLDEV)
    write(tmp_path / "run", "null.yaml", """
cdiVersion: 0.6.0
kind: example.test/null
devices:
  - name: one
    containerEdits:
      env: [WHICH=run]
""")
    edits = resolve(["example.test/null=one"], [tmp_path / "etc", tmp_path / "run"])
    assert [e.env for e in edits] == [[], ["WHICH=run"]]


def test_unknown_conflicting_and_broken_devices_are_errors_naming_them(tmp_path):
    etc = tmp_path / "etc"
    write(etc, "null.json", NULLDEV)
    with pytest.raises(CDIError, match=r"unknown CDI device example.test/null=three: no CDI spec in .*etc"):
        resolve(["example.test/null=three"], [etc])
    write(etc, "other.json", {**NULLDEV, "devices": [NULLDEV["devices"][0]]})
    with pytest.raises(CDIError, match=r"example.test/null=one is defined twice, in .*null.json and .*other.json"):
        resolve(["example.test/null=one"], [etc])
    assert resolve(["example.test/null=two"], [etc])  # the other device of the file is fine
    write(etc, "zz-broken.yaml", "cdiVersion: [unclosed")
    with pytest.raises(CDIError, match=r"unknown CDI device vendor.test/x=y.*zz-broken.yaml is invalid"):
        resolve(["vendor.test/x=y"], [etc])


@pytest.mark.parametrize("device_edits, message", [
    ({"deviceNodes": [{"path": "/dev/gone", "hostPath": "/dev/does-not-exist"}]}, "/dev/does-not-exist on the host"),
    ({"deviceNodes": [{"path": "/dev/x", "hostPath": "/etc/passwd"}]}, "not a device node"),
    ({"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null", "permissions": "rwx"}]}, "combination of r, w and m"),
    ({"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null", "type": "b"}]}, "of type c, the spec says b"),
    ({"hooks": [{"hookName": "preStart", "path": "/bin/true"}]}, "unknown hook 'preStart'"),
    ({"mounts": [{"hostPath": "/etc", "containerPath": "rel"}]}, "not absolute"),
    ({"env": ["NOVALUE"]}, "not NAME=VALUE"),
])
def test_bad_device_edits_are_errors_naming_the_device(tmp_path, device_edits, message):
    write(tmp_path, "bad.json", {"cdiVersion": "0.6.0", "kind": "example.test/bad",
                                 "devices": [{"name": "d", "containerEdits": device_edits}]})
    with pytest.raises(CDIError, match="example.test/bad=d") as err:
        resolve(["example.test/bad=d"], [tmp_path])
    assert message in str(err.value)


def test_an_unknown_edit_makes_the_spec_invalid_rather_than_being_dropped(tmp_path):
    write(tmp_path, "new.json", {"cdiVersion": "1.1.0", "kind": "example.test/new",
                                 "devices": [{"name": "d", "containerEdits": {"netDevices": [{"hostInterfaceName": "x"}]}}]})
    with pytest.raises(CDIError, match=r"new.json is invalid: devices.0.containerEdits.netDevices"):
        resolve(["example.test/new=d"], [tmp_path])


def test_a_fully_described_node_needs_no_host_device(tmp_path):
    write(tmp_path, "v.json", {"cdiVersion": "0.6.0", "kind": "example.test/v", "devices": [
        {"name": "d", "containerEdits": {"deviceNodes": [{"path": "/dev/vdev", "type": "c", "major": 240, "minor": 7}]}}]})
    node = resolve(["example.test/v=d"], [tmp_path])[1].device_nodes[0]
    assert (node.type, node.major, node.minor, node.file_mode) == ("c", 240, 7, None)


def test_apply_edits_to_a_spec(tmp_path):
    write(tmp_path, "null.json", NULLDEV)
    base = {"process": {"env": ["PATH=/bin", "WHICH=image"], "user": {"uid": 0, "gid": 0, "additionalGids": [44]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": []},
                       {"destination": "/etc/xnull/release", "type": "bind", "source": "/x", "options": ["rbind"]},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []}],
            "linux": {"devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]}}}
    before = json.dumps(base)
    spec = apply_edits(base, resolve(["example.test/null=one", "example.test/null=two"], [tmp_path]))
    assert json.dumps(base) == before  # the input is not changed
    assert spec["process"]["env"] == ["PATH=/bin", "NULL_VENDOR=example", "WHICH=one"]
    assert spec["process"]["user"]["additionalGids"] == [44]  # 0 is ignored, 44 not repeated
    mode = Path("/dev/null").stat().st_mode & 0o7777
    assert spec["linux"]["devices"] == [
        {"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": mode},
        {"path": "/dev/xzero", "type": "c", "major": 1, "minor": 5, "fileMode": mode}]
    assert spec["linux"]["resources"]["devices"][1:] == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rw"}]
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/dev", "/etc/xnull/release"]
    assert spec["mounts"][-1] == {"destination": "/etc/xnull/release", "type": "bind", "source": "/etc/os-release",
                                  "options": ["rbind", "ro", "nosuid"]}
    assert spec["hooks"] == {"createContainer": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}
    assert apply_edits(base, []) is base


def test_a_spec_name_that_is_no_regular_file_is_reported_not_waited_on(tmp_path):
    """A FIFO (or a device) named *.json would block the read forever: a worker thread per CreateContainer, until
    the daemon's thread pool was used up."""
    import os
    import threading

    etc = tmp_path / "etc"
    write(etc, "null.json", NULLDEV)
    os.mkfifo(etc / "fifo.json")
    os.symlink("/dev/zero", etc / "zero.yaml")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(resolve(["example.test/null=one"], [etc])), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "resolve blocked on the FIFO"
    assert result and result[0]
    with pytest.raises(CDIError, match=r"fifo.json is invalid: not a regular file.*zero.yaml is invalid: not a regular"):
        resolve(["vendor.test/x=y"], [etc])
