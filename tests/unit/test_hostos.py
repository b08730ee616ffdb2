"""The host package: one mountinfo parser, atomic file writes, cgroup directories in fake cgroupfs trees."""

import asyncio
import os
import subprocess
import threading

import pytest

from hostos import atomicfile, cgroups, mountinfo

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/shared rw shared:7 - tmpfs tmpfs rw
41 27 0:51 / /srv/slave rw master:7 - tmpfs tmpfs rw
43 40 0:53 / /srv/shared/inner rw - tmpfs tmpfs rw
44 27 0:54 / /srv/with\\040space rw shared:9 - tmpfs tmpfs rw
45 27 0:55 /sub\\134dir /srv/tab\\011new\\012line\\134 ro,nosuid - tmpfs my\\040src rw,size=1k
46 27 0:56 / /srv/shared/a rw - tmpfs tmpfs rw
47 46 0:57 / /srv/shared/a/b rw - tmpfs tmpfs rw
garbage line without separator
"""


def test_mountinfo_fields_and_every_octal_escape():
    mounts = mountinfo.parse(MOUNTINFO)
    assert [m.mount_id for m in mounts] == [27, 40, 41, 43, 44, 45, 46, 47]
    odd = mounts[5]
    assert odd.mount_point == "/srv/tab\tnew\nline\\"
    assert odd.root == "/sub\\dir"
    assert odd.source == "my src"
    assert not odd.writable
    assert odd.options == ("ro", "nosuid")
    assert odd.super_options == ("rw", "size=1k")
    assert mounts[1].propagation == {"shared"}
    assert mounts[2].propagation == {"master"}
    assert not mounts[3].propagation
    assert mounts[4].mount_point == "/srv/with space"


@pytest.mark.parametrize("path,point", [("/srv/shared/x/y", "/srv/shared"), ("/srv/shared/inner/x", "/srv/shared/inner"),
                                        ("/srv/sharedx", "/"), ("/srv/with space/f", "/srv/with space"),
                                        ("/srv/shared", "/srv/shared")])
def test_the_deepest_mount_holds_the_path(path, point):
    assert mountinfo.mount_of(path, mountinfo.parse(MOUNTINFO)).mount_point == point


def test_mounts_below_are_strictly_below_and_deepest_first():
    mounts = mountinfo.parse(MOUNTINFO)
    assert mountinfo.mounts_below("/srv/shared", mounts) == ["/srv/shared/inner", "/srv/shared/a/b", "/srv/shared/a"]
    assert mountinfo.mounts_below("/srv/shared/a/", mounts) == ["/srv/shared/a/b"]


def test_this_process_sees_its_root_mount():
    assert any(m.mount_point == "/" for m in mountinfo.read())


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "f.json"
    atomicfile.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_bytes() == b'{"a":[1,2],"b":1}'
    atomicfile.atomic_write_bytes(target, b"new", durable=False, mode=0o640)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.json"]


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomicfile.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_concurrent_writers_of_one_path_never_share_a_temp_file(tmp_path):
    target = tmp_path / "shared"
    payloads = [bytes([65 + i]) * 200_000 for i in range(8)]
    errors = []

    def writer(data):
        try:
            for _ in range(20):
                atomicfile.atomic_write_bytes(target, data, durable=False)
                assert target.read_bytes() in payloads  # whole, never a mix of two writers
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and os.listdir(tmp_path) == ["shared"]


HYBRID = """\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/pids ro - cgroup cgroup rw,pids
"""


def test_hybrid_layout_has_the_named_hierarchy_and_skips_read_only_ones():
    lay = cgroups.parse_mountinfo(HYBRID)
    assert [str(p) for p in cgroups.hierarchies(lay)] == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
    assert "pids" not in lay.v1 and not lay.is_v2


@pytest.mark.parametrize("path,clean", [("pod//a/./b/", "/pod/a/b"), ("/", "/"), ("x", "/x")])
def test_clean_path(path, clean):
    assert cgroups.clean_path(path) == clean


@pytest.mark.parametrize("bad", ["/a/../b", ".."])
def test_clean_path_refuses_escapes(bad):
    with pytest.raises(ValueError, match="must not contain"):
        cgroups.clean_path(bad)


def _fake_v1(tmp_path):
    for c in ("cpuset", "memory"):
        (tmp_path / c).mkdir()
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return cgroups.Layout(unified=None, v1={c: tmp_path / c for c in ("cpuset", "memory")})


def test_create_reports_what_it_made_and_seeds_cpuset(tmp_path):
    lay = _fake_v1(tmp_path)
    (tmp_path / "memory" / "kubepods").mkdir()
    created = cgroups.create("/kubepods/pod1", lay)
    assert created == [str(tmp_path / "cpuset/kubepods"), str(tmp_path / "cpuset/kubepods/pod1"),
                       str(tmp_path / "memory/kubepods/pod1")]
    assert (tmp_path / "cpuset/kubepods/pod1/cpuset.cpus").read_text() == "0-1\n"


def test_create_seeds_a_parent_a_concurrent_create_made_but_had_not_seeded_yet(tmp_path):
    """Ten pods started at once: one create mkdirs the shared parent, another finds it there with empty cpus and
    mems and must not copy those into its pod's cgroup (every task is then refused with ENOSPC)."""
    lay = _fake_v1(tmp_path)
    (tmp_path / "cpuset/pycri").mkdir()
    for name in ("cpuset.cpus", "cpuset.mems"):
        (tmp_path / "cpuset/pycri" / name).write_text("\n")  # made, not yet seeded
    created = cgroups.create("/pycri/pod1", lay)
    assert str(tmp_path / "cpuset/pycri") not in created
    assert (tmp_path / "cpuset/pycri/pod1/cpuset.cpus").read_text() == "0-1\n"
    assert (tmp_path / "cpuset/pycri/pod1/cpuset.mems").read_text() == "0\n"
    assert (tmp_path / "cpuset/pycri/cpuset.cpus").read_text() == "0-1\n"


def test_create_makes_missing_parents_top_down_and_move_writes_every_hierarchy(tmp_path):
    """Outside cpuset the leaf is tried first: parents are made only where missing, and reported top-down."""
    lay = _fake_v1(tmp_path)
    (tmp_path / "memory" / "kubepods").mkdir()
    created = cgroups.create("/kubepods/pod1/ctr1", lay)
    assert created == [str(tmp_path / "cpuset/kubepods"), str(tmp_path / "cpuset/kubepods/pod1"),
                       str(tmp_path / "cpuset/kubepods/pod1/ctr1"), str(tmp_path / "memory/kubepods/pod1"),
                       str(tmp_path / "memory/kubepods/pod1/ctr1")]
    assert cgroups.create("/kubepods/pod1/ctr2", lay) == [str(tmp_path / "cpuset/kubepods/pod1/ctr2"),
                                                          str(tmp_path / "memory/kubepods/pod1/ctr2")]
    assert cgroups.create("/kubepods/pod1/ctr2", lay) == []
    for hierarchy in ("cpuset", "memory"):
        (tmp_path / hierarchy / "kubepods/pod1/ctr2/cgroup.procs").write_text("")
    cgroups.move(4242, "/kubepods/pod1/ctr2", lay)
    assert [(tmp_path / h / "kubepods/pod1/ctr2/cgroup.procs").read_text() for h in ("cpuset", "memory")] == \
        ["4242", "4242"]
    with pytest.raises(FileNotFoundError):
        cgroups.move(4242, "/kubepods/pod1/gone", lay)


def test_kill_all_kills_what_the_cgroup_holds_and_waits_until_it_is_empty(tmp_path):
    """The fake kernel: the listed process is reaped, then its cgroup files say empty."""
    lay = cgroups.Layout(unified=tmp_path / "unified", v1={"memory": tmp_path / "memory"})
    dirs = [tmp_path / "memory/pod/c1", tmp_path / "unified/pod/c1"]
    for d in dirs:
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    child = subprocess.Popen(["sleep", "60"])
    (dirs[0] / "cgroup.procs").write_text(f"{child.pid}\n")
    (dirs[1] / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    def kernel() -> None:
        child.wait()
        (dirs[0] / "cgroup.procs").write_text("")
        (dirs[1] / "cgroup.events").write_text("populated 0\nfrozen 0\n")

    reaper = threading.Thread(target=kernel)
    reaper.start()
    try:
        assert cgroups.procs(dirs[0]) == [child.pid]
        assert cgroups.kill_all("/pod/c1", 5.0, lay)
    finally:
        child.kill()
        reaper.join()
    assert child.returncode == -9
    (dirs[1] / "cgroup.events").write_text("populated 1\nfrozen 0\n")  # something that never leaves
    assert not cgroups.kill_all("/pod/c1", 0.1, lay)


def test_remove_created_leaves_a_shared_parent_and_removes_ours(tmp_path):
    lay = cgroups.Layout(unified=tmp_path / "unified", v1={"memory": tmp_path / "memory"})  # no files to seed
    for hierarchy in cgroups.hierarchies(lay):
        hierarchy.mkdir()
    ours = cgroups.create("/kubepods/pod1", lay)
    (tmp_path / "memory/kubepods/other-pod").mkdir(parents=True)  # kubepods is now shared
    asyncio.run(cgroups.remove_created(ours, timeout=0.1))
    assert not (tmp_path / "memory/kubepods/pod1").exists()
    assert (tmp_path / "memory/kubepods/other-pod").exists()
    assert not (tmp_path / "unified/kubepods").exists()


def test_find_names_anywhere_without_descending(tmp_path):
    lay = _fake_v1(tmp_path)
    (tmp_path / "memory/a/pycri-1/pycri-2").mkdir(parents=True)
    (tmp_path / "cpuset/b/pycri-2").mkdir(parents=True)
    assert sorted(cgroups.find({"pycri-1", "pycri-2"}, lay)) == sorted(
        [str(tmp_path / "memory/a/pycri-1"), str(tmp_path / "cpuset/b/pycri-2")])


def test_place_refuses_the_root(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        cgroups.place(os.getpid(), "/", _fake_v1(tmp_path))


PRESSURE = "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=77\n"


def test_pressure_lines_and_a_cpu_file_without_full():
    p = cgroups.parse_pressure(PRESSURE)
    assert p.some == cgroups.PsiData(12345, 1.5, 0.25, 0.0) and p.full.total_us == 77
    assert cgroups.parse_pressure(PRESSURE.splitlines()[0]).full is None


def test_v2_stats_with_swap_pressure_and_oom_kills(tmp_path):
    c = tmp_path / "pod" / "c1"
    c.mkdir(parents=True)
    (c / "memory.current").write_text("10000\n")
    (c / "memory.swap.current").write_text("4096\n")
    (c / "memory.swap.max").write_text("65536\n")
    for name in ("cpu", "memory", "io"):
        (c / f"{name}.pressure").write_text(PRESSURE)
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    lay = cgroups.Layout(unified=tmp_path, v1={})
    stats = cgroups.read_stats("/pod/c1", lay)
    assert (stats.swap_usage, stats.swap_limit) == (4096, 65536)
    assert stats.cpu_pressure.some.total_us == stats.io_pressure.full.total_us + 12268
    assert cgroups.oom_kills("/pod/c1", lay) == 1
    assert cgroups.oom_kills("/pod/gone", lay) == 0 and cgroups.oom_kills("/", lay) == 0
    (c / "memory.swap.max").write_text("max\n")
    (c / "io.pressure").unlink()  # a kernel without PSI has none of the files
    stats = cgroups.read_stats("/pod/c1", lay)
    assert stats.swap_limit is None and stats.io_pressure is None


def test_v1_swap_is_memsw_minus_memory_and_oom_kills_from_oom_control(tmp_path):
    c = tmp_path / "memory" / "pod" / "c1"
    c.mkdir(parents=True)
    (c / "memory.usage_in_bytes").write_text("5000\n")
    (c / "memory.memsw.usage_in_bytes").write_text("7000\n")
    (c / "memory.limit_in_bytes").write_text("100000\n")
    (c / "memory.memsw.limit_in_bytes").write_text("150000\n")
    (c / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    lay = cgroups.Layout(unified=None, v1={"memory": tmp_path / "memory"})
    stats = cgroups.read_stats("/pod/c1", lay)
    assert (stats.swap_usage, stats.swap_limit, stats.cpu_pressure) == (2000, 50000, None)
    assert cgroups.oom_kills("/pod/c1", lay) == 2


def test_describe_names_the_version_and_what_it_offers(tmp_path):
    (tmp_path / "memory").mkdir()
    hybrid = cgroups.describe(cgroups.Layout(unified=tmp_path / "u", v1={"memory": tmp_path / "memory"}))
    assert hybrid == {"version": "hybrid", "swap_accounting": False, "pressure": False}
    (tmp_path / "memory" / "memory.memsw.limit_in_bytes").write_text("0")
    assert cgroups.describe(cgroups.Layout(unified=None, v1={"memory": tmp_path / "memory"}))["swap_accounting"]
    (tmp_path / "sys.slice").mkdir()
    (tmp_path / "sys.slice" / "memory.swap.max").write_text("max\n")
    v2 = cgroups.describe(cgroups.Layout(unified=tmp_path, v1={}))
    assert v2["version"] == "v2" and v2["swap_accounting"]


def test_create_on_v2_does_not_seed_cpuset(tmp_path):
    (tmp_path / "cpuset.cpus").write_text("0-1\n")  # the parent enables cpuset, the new child has no such file yet
    lay = cgroups.Layout(unified=tmp_path, v1={})
    assert cgroups.create("/pod", lay) == [str(tmp_path / "pod")]
    assert not (tmp_path / "pod" / "cpuset.cpus").exists()
