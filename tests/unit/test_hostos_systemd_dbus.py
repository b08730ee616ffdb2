"""hostos.cgroups.systemd against a fake systemd Manager on a private D-Bus daemon: the calls, the job signals and
the errors, as systemd answers them (the node VM lane runs the real one)."""

import asyncio
import os
import shutil
import signal
import subprocess

import pytest

from hostos.cgroups import systemd

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")


def _fake_manager():
    from dbus_fast import DBusError
    from dbus_fast.service import ServiceInterface, method, signal

    class Manager(ServiceInterface):
        def __init__(self):
            super().__init__("org.freedesktop.systemd1.Manager")
            self.units: dict[str, tuple] = {}
            self.properties: dict[str, tuple] = {}
            self.subscribed = False
            self.job = 0

        def _finish(self, unit: str, result: str) -> str:
            self.job += 1
            path = f"/org/freedesktop/systemd1/job/{self.job}"
            asyncio.get_running_loop().call_later(0.01, self.JobRemoved, self.job, path, unit, result)
            return path

        @method()
        def Subscribe(self):
            self.subscribed = True

        @method()
        def StartTransientUnit(self, name: "s", mode: "s", properties: "a(sv)", aux: "a(sa(sv))") -> "o":
            props = {key: value.value for key, value in properties}
            if name in self.units:
                raise DBusError("org.freedesktop.systemd1.UnitExists", f"Unit {name} was already loaded")
            self.units[name] = (props["Slice"], props["PIDs"], props["CollectMode"])
            return self._finish(name, "failed" if props["PIDs"] == [0] else "done")

        @method()
        def StopUnit(self, name: "s", mode: "s") -> "o":
            if self.units.pop(name, None) is None:
                raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {name} not loaded.")
            return self._finish(name, "done")

        @method()
        def SetUnitProperties(self, name: "s", runtime: "b", properties: "a(sv)"):
            self.properties[name] = (runtime, {key: value.value for key, value in properties})

        @method()
        def ListUnitsByPatterns(self, states: "as", patterns: "as") -> "a(ssssssouso)":
            return [[u, "", "loaded", "active", "running", "", "/", 0, "", "/"] for u in self.units
                    if u.startswith(patterns[0].rstrip("*"))]

        @signal()
        def JobRemoved(self, job_id, job, unit, result) -> "uoss":
            return [job_id, job, unit, result]

    return Manager()


async def _round_trip(bus) -> None:
    """Returns once the bus daemon has read everything `bus` sent before (it answers each connection in order)."""
    from dbus_fast import Message

    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="GetId"))


async def _scenario(address: str):
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    service = await MessageBus(bus_type=BusType.SYSTEM).connect()
    manager = _fake_manager()
    service.export("/org/freedesktop/systemd1", manager)
    await service.request_name("org.freedesktop.systemd1")
    client = systemd.Systemd()
    try:
        await client.start_scope("pycri-a.scope", "pycri.slice", [123], "test")
        assert manager.subscribed
        assert manager.units["pycri-a.scope"] == ("pycri.slice", [123], "inactive-or-failed")
        assert await client.units("pycri-*") == ["pycri-a.scope"]
        with pytest.raises(systemd.SystemdError, match="UnitExists"):
            await client.start_scope("pycri-a.scope", "pycri.slice", [123], "test")
        with pytest.raises(systemd.SystemdError, match="could not start pycri-b.scope in pycri.slice: job failed"):
            await client.start_scope("pycri-b.scope", "pycri.slice", [0], "test")
        for i in range(300):  # other clients' jobs (kubelet's slices...) are signalled to us too
            manager.JobRemoved(1000 + i, f"/org/freedesktop/systemd1/job/{1000 + i}", "other.service", "done")
            if i % 25 == 24:  # dbus-fast drops its connection on EAGAIN (python-dbus-next#153): a burst must not
                await _round_trip(service)  # outrun a dbus-daemon starved of CPU and fill the socket buffer
        await asyncio.sleep(0.3)
        assert len(client._early) <= systemd._EARLY_RESULTS  # kept a while, never without bound
        await client.set_properties("kubepods-pod1.slice", [("MemoryMax", "t", 1 << 27), ("AllowedCPUs", "ay", b"\x03")])
        assert manager.properties["kubepods-pod1.slice"] == (True, {"MemoryMax": 1 << 27, "AllowedCPUs": b"\x03"})
        await client.stop_unit("pycri-a.scope")
        await client.stop_unit("pycri-a.scope")  # gone already: fine
        assert "pycri-a.scope" not in manager.units
    finally:
        await client.close()
        service.disconnect()


@pytest.fixture
def bus_daemon(tmp_path, monkeypatch):
    """A private dbus-daemon: (its process, its address)."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "")
    config = tmp_path / "bus.conf"
    config.write_text(f"""<busconfig><type>session</type><listen>unix:path={tmp_path}/bus</listen>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
<allow own="*"/></policy></busconfig>""")
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
                              stdout=subprocess.PIPE, text=True)
    try:
        yield daemon, daemon.stdout.readline().strip()
    finally:
        daemon.kill()
        daemon.wait()


def test_scopes_through_a_fake_systemd(bus_daemon):
    _, address = bus_daemon
    asyncio.run(asyncio.wait_for(_scenario(address), 20))


async def _burst(daemon: subprocess.Popen, address: str) -> list:
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    service = await MessageBus(bus_type=BusType.SYSTEM).connect()
    service.export("/org/freedesktop/systemd1", _fake_manager())
    await service.request_name("org.freedesktop.systemd1")
    client = systemd.Systemd()
    try:
        await client.units("pycri-*")  # connected
        daemon.send_signal(signal.SIGSTOP)  # a dbus-daemon starved of CPU reads nothing for a while
        try:
            calls = [asyncio.ensure_future(client.units(f"pycri-{i}-*")) for i in range(600)]
            await asyncio.sleep(0.5)
        finally:
            daemon.send_signal(signal.SIGCONT)
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.close()
        service.disconnect()


def test_a_burst_of_calls_outlasting_a_stalled_bus_daemon_all_succeed(bus_daemon):
    """dbus-fast drops its connection when a send finds the socket full (python-dbus-next#153): so many calls at
    once (kubelet starting hundreds of containers) must never fill it while the bus daemon is slow to read."""
    daemon, address = bus_daemon
    answers = asyncio.run(asyncio.wait_for(_burst(daemon, address), 60))
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed == [], f"{len(failed)} of {len(answers)} failed, first: {failed[:1]!r}"
