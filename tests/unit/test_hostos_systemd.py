"""The cgroup managers: slice names as cgroup paths, what runc is told, and when systemd may be chosen."""

import asyncio
from pathlib import Path

import pytest

from hostos.cgroups import driver as drivers, systemd


@pytest.mark.parametrize("name,path", [
    ("-.slice", "/"), ("pycri.slice", "/pycri.slice"),
    ("kubepods-burstable-pod1a2b.slice", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice"),
])
def test_slice_names_expand_to_their_cgroup_path(name, path):
    assert systemd.expand_slice(name) == path


@pytest.mark.parametrize("bad", ["kubepods", "/kubepods.slice", "a--b.slice", "-a.slice", "a-.slice", ".slice",
                                 "a b.slice"])
def test_what_is_not_a_slice_name_is_refused(bad):
    with pytest.raises(ValueError):
        systemd.expand_slice(bad)


def test_systemd_driver_paths_and_what_runc_is_told():
    d = drivers.SystemdDriver(client=None)
    parent = d.parent("kubepods-besteffort-podx.slice")
    path = d.child(parent, "pycri-abc")
    assert path == "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/pycri-abc.scope"
    assert d.spec_path(path) == "kubepods-besteffort-podx.slice:pycri:abc"
    assert d.spec_path(d.child(d.parent(""), "pycri-conmon-abc")) == "pycri.slice:pycri:conmon-abc"
    assert systemd.scope_name("/pycri-x.scope") == ("-.slice", "pycri-x.scope")
    assert d.runtime_args == ("--systemd-cgroup",)
    assert dict(d.spec_annotations) == {"run.oci.systemd.subgroup": ""}  # crun: the container in the scope itself


def test_cgroupfs_driver_keeps_paths_as_they_are():
    d = drivers.CgroupfsDriver()
    parent = d.parent("kubepods//burstable/pod1/")
    assert parent == "/kubepods/burstable/pod1" and d.parent("") == "/pycri"
    assert d.spec_path(d.child(parent, "pycri-abc")) == "/kubepods/burstable/pod1/pycri-abc"
    assert d.runtime_args == () and d.conmon_args == () and d.spec_annotations == ()
    asyncio.run(d.check())


def test_auto_follows_pid_1_and_systemd_without_systemd_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SYSTEMD_RUN_DIR", tmp_path / "absent")
    assert drivers.resolve("auto") == "cgroupfs" and drivers.resolve("cgroupfs") == "cgroupfs"
    with pytest.raises(systemd.SystemdError, match="systemd is not PID 1 here"):
        drivers.resolve("systemd")
    monkeypatch.setattr(systemd, "SYSTEMD_RUN_DIR", tmp_path)
    assert drivers.resolve("auto") == "systemd"
    assert isinstance(drivers.driver("auto"), drivers.SystemdDriver)


class FakeClient:
    def __init__(self):
        self.calls = []

    async def start_scope(self, unit, slice_name, pids, description):
        self.calls.append(("start", unit, slice_name, pids))

    async def stop_unit(self, unit):
        self.calls.append(("stop", unit))

    async def set_properties(self, unit, properties):
        self.calls.append(("set", unit, properties))


def test_systemd_driver_makes_a_scope_in_the_parent_slice_and_stops_it():
    client = FakeClient()
    d = drivers.SystemdDriver(client)
    path = d.child(d.parent("kubepods-pod1.slice"), "pycri-conmon-c1")
    asyncio.run(d.place(42, path))
    asyncio.run(d.release(path))
    assert client.calls == [("start", "pycri-conmon-c1.scope", "kubepods-pod1.slice", [42]),
                            ("stop", "pycri-conmon-c1.scope")]


def test_releasing_a_scope_kills_what_is_left_in_it_before_systemd_stops_it(tmp_path, monkeypatch):
    """A half-started infra (a PID namespace's init before its exec) ignores SIGTERM, which is all systemd's stop
    sends before TimeoutStopSec (90 s): what is left in the scope is SIGKILLed before StopUnit."""
    import signal
    import subprocess
    from hostos.cgroups.layout import Layout

    monkeypatch.setattr(drivers, "layout", lambda: Layout(unified=tmp_path, v1={}))
    stubborn = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))

    class Recording(FakeClient):
        async def stop_unit(self, unit):
            try:  # dead by the time systemd is asked: only the driver's SIGKILL can have ended it
                code = stubborn.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.calls.append(("stop", unit, code))

    try:
        client = Recording()
        d = drivers.SystemdDriver(client)
        path = d.child(d.parent("kubepods-pod1.slice"), "pycri-infra")
        scope = tmp_path / path.lstrip("/")
        scope.mkdir(parents=True)
        (scope / "cgroup.procs").write_text(f"{stubborn.pid}\n")
        asyncio.run(d.release(path))
        assert client.calls == [("stop", "pycri-infra.scope", -signal.SIGKILL)]
    finally:
        stubborn.kill()
        stubborn.wait()


@pytest.mark.parametrize("requested,path", [
    ("/test.slice", "/test.slice"),  # critest's parent under the systemd driver
    ("/kubepods.slice/kubepods-besteffort.slice/", "/kubepods.slice/kubepods-besteffort.slice"),
])
def test_a_slice_given_as_its_cgroup_path_is_that_slice(requested, path):
    assert drivers.SystemdDriver(client=None).parent(requested) == path


@pytest.mark.parametrize("bad", ["/kubepods.slice/other.slice", "/a/b", "/pycri"])
def test_a_path_that_is_not_where_systemd_puts_the_slice_is_refused(bad):
    with pytest.raises(ValueError):
        drivers.SystemdDriver(client=None).parent(bad)


def test_the_systemd_properties_of_a_pod_resize_keep_what_was_written():
    writes = [("", "cpu.max", "150000 100000"), ("", "cpu.weight", "59"), ("", "memory.max", str(96 << 20)),
              ("", "memory.swap.max", "max"), ("", "cpuset.cpus", "0-2,9"), ("", "hugetlb.2MB.max", "0"),
              ("", "memory.high", str(64 << 20)), ("", "pids.max", "max"), ("", "io.max", "8:0 rbps=1")]
    assert systemd.unit_properties(writes) == [
        ("CPUQuotaPeriodUSec", "t", 100000), ("CPUQuotaPerSecUSec", "t", 1500000), ("CPUWeight", "t", 59),
        ("MemoryMax", "t", 96 << 20), ("MemorySwapMax", "t", 2**64 - 1), ("AllowedCPUs", "ay", b"\x07\x02"),
        ("MemoryHigh", "t", 64 << 20), ("TasksMax", "t", 2**64 - 1)]  # hugetlb, io.max: systemd leaves them
    # systemd keeps the quota per second in 10 ms steps: rounded up, never below what was asked
    assert systemd.unit_properties([("", "cpu.max", "1234 100000")])[1] == ("CPUQuotaPerSecUSec", "t", 20000)
    assert systemd.unit_properties([("", "cpu.max", "max 50000")])[1] == ("CPUQuotaPerSecUSec", "t", 2**64 - 1)
    assert systemd.unit_properties([("memory", "memory.limit_in_bytes", "1")]) == []  # v1: not the driver's shape


def test_a_pod_resize_under_the_systemd_driver_is_told_to_systemd(monkeypatch):
    from hostos.cgroups import driver as driver_module
    from hostos.cgroups.layout import Layout
    from hostos.cgroups.limits import Limits

    monkeypatch.setattr(driver_module, "layout", lambda: Layout(unified=Path("/sys/fs/cgroup"), v1={}))
    client = FakeClient()
    d = drivers.SystemdDriver(client)
    asyncio.run(d.keep("/kubepods.slice/kubepods-pod1.slice", Limits(memory=64 << 20)))
    asyncio.run(d.keep("/kubepods.slice/kubepods-pod1.slice", Limits(hugepages=(("2MB", 0),))))  # nothing to tell
    assert client.calls == [("set", "kubepods-pod1.slice", [("MemoryMax", "t", 64 << 20)])]
    asyncio.run(drivers.CgroupfsDriver().keep("/pycri", Limits(memory=1)))  # cgroupfs: the files are all there is
