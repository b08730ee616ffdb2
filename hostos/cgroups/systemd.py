"""systemd as the cgroup manager: slice names as paths, and transient scopes made through its D-Bus API.

Under systemd (PID 1) the cgroup tree belongs to systemd: a process of ours gets a cgroup by being put in a
transient scope unit (StartTransientUnit with its pid), as runc's systemd driver, CRI-O and podman do, never by
mkdir. An empty transient scope is collected by systemd itself; StopUnit kills what is left and removes it.
dbus-fast is the D-Bus client: asyncio-native (the daemon's loop), maintained, typed variants.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (dbus_fast is imported on first use: only systemd hosts need it)
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

SYSTEMD_RUN_DIR = Path("/run/systemd/system")
_DEST, _PATH = "org.freedesktop.systemd1", "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
JOB_TIMEOUT = 10.0
_EARLY_RESULTS = 256
# Calls in flight at once. dbus-fast drops the connection when a send finds the socket full (EAGAIN,
# python-dbus-next#153); 64 small messages stay far below a socket's buffer however slowly the bus daemon reads.
_MAX_IN_FLIGHT = 64


class SystemdError(OSError):
    """systemd refused a unit, or cannot be reached."""


def running() -> bool:
    """Whether systemd is PID 1 here (what sd_booted(3) checks)."""
    return SYSTEMD_RUN_DIR.is_dir()


def expand_slice(name: str) -> str:
    """The cgroup path of a slice unit: each dash opens a level ("a-b.slice" is /a.slice/a-b.slice)."""
    if not name.endswith(".slice") or "/" in name or not _UNIT_RE.match(name):
        raise ValueError(f"{name!r} is not a systemd slice name (like kubepods-besteffort.slice)")
    stem = name[:-len(".slice")]
    if stem == "-":
        return "/"
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise ValueError(f"slice name {name!r} has an empty level")
    parts = stem.split("-")
    return "".join(f"/{'-'.join(parts[:i + 1])}.slice" for i in range(len(parts)))


def scope_name(path: str) -> tuple[str, str]:
    """(parent slice, scope unit) of a scope's cgroup path as expand_slice and Driver.child make them."""
    parent, _, unit = path.rstrip("/").rpartition("/")
    if not unit.endswith(".scope"):
        raise ValueError(f"cgroup {path!r} is not a systemd scope")
    return (parent.rpartition("/")[2] or "-.slice"), unit


_INFINITY = 2**64 - 1
# cgroup v2 files systemd writes from a unit's own settings whenever it re-applies them (daemon-reload, a
# new unit in the slice): a value written straight into such a file and not told to systemd is reset.
_TIME_PROPERTIES = {"memory.max": "MemoryMax", "memory.high": "MemoryHigh", "memory.low": "MemoryLow",
                    "memory.min": "MemoryMin", "memory.swap.max": "MemorySwapMax", "pids.max": "TasksMax",
                    "cpu.weight": "CPUWeight"}
_CPU_SET_PROPERTIES = {"cpuset.cpus": "AllowedCPUs", "cpuset.mems": "AllowedMemoryNodes"}


def _cpu_mask(cpus: str) -> bytes:
    """A cpuset list ("0-2,5") as systemd's CPU mask: bit n of byte n/8 for each CPU n."""
    bits: set[int] = set()
    for part in filter(None, cpus.replace(" ", "").split(",")):
        low, _, high = part.partition("-")
        bits.update(range(int(low), int(high or low) + 1))
    mask = bytearray((max(bits) // 8 + 1) if bits else 0)
    for bit in bits:
        mask[bit // 8] |= 1 << (bit % 8)
    return bytes(mask)


def unit_properties(writes: list[tuple[str, str, str]]) -> list[tuple[str, str, Any]]:
    """(name, D-Bus signature, value) of the unit properties that make systemd keep the cgroup v2 writes
    (controller "", file, value) as limits.planned_writes gives them. Files systemd does not manage (hugetlb,
    other unified keys) need none: it leaves them alone."""
    props: list[tuple[str, str, Any]] = []
    for controller, name, value in writes:
        if controller:
            continue
        if name == "cpu.max":
            quota, _, period = value.partition(" ")
            period_us = int(period)
            props.append(("CPUQuotaPeriodUSec", "t", period_us))
            if quota == "max":
                props.append(("CPUQuotaPerSecUSec", "t", _INFINITY))
            else:  # systemd keeps the quota per second in 10 ms steps (CPUQuota=NN.NN%): round up, as runc does
                per_sec = -(-int(quota) * 1_000_000 // period_us)
                props.append(("CPUQuotaPerSecUSec", "t", -(-per_sec // 10_000) * 10_000))
        elif name in _TIME_PROPERTIES:
            props.append((_TIME_PROPERTIES[name], "t", _INFINITY if value == "max" else int(value)))
        elif name in _CPU_SET_PROPERTIES:
            props.append((_CPU_SET_PROPERTIES[name], "ay", _cpu_mask(value)))
    return props


class Systemd:
    """A connection to the system bus, opened at start (connect) or on first use, and reopened after it drops."""

    def __init__(self) -> None:
        self._bus: MessageBus | None = None
        self._lock = asyncio.Lock()
        self._jobs: dict[str, asyncio.Future[str]] = {}   # our jobs, waited for
        self._early: OrderedDict[str, str] = OrderedDict()  # results signalled before we knew the job was ours
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def connect(self) -> MessageBus:
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus

        async with self._lock:
            if self._bus is not None and self._bus.connected:
                return self._bus
            try:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            except (OSError, ValueError) as e:
                raise SystemdError(f"cannot reach systemd on the system bus: {e}") from None
            bus.add_message_handler(self._on_message)
            rule = f"type='signal',sender='{_DEST}',interface='{_MANAGER}',member='JobRemoved'"
            await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
            await self._call(bus, "Subscribe", "", [])  # systemd sends job signals only to subscribers
            self._bus = bus
            return bus

    def _on_message(self, msg: Message) -> None:
        """JobRemoved comes for every client's jobs; the signal can be read before the reply naming our job is
        handed back, so the latest results are kept a while (bounded) for a waiter that comes just after."""
        if msg.member == "JobRemoved" and msg.interface == _MANAGER:
            _, job, _, result = msg.body
            future = self._jobs.get(job)
            if future is not None:
                if not future.done():
                    future.set_result(result)
                return
            self._early[job] = result
            while len(self._early) > _EARLY_RESULTS:
                self._early.popitem(last=False)

    async def _call(self, bus: MessageBus, member: str, signature: str, body: list[Any]) -> list[Any]:
        from dbus_fast import Message, MessageType

        async with self._in_flight:
            reply = await bus.call(Message(destination=_DEST, path=_PATH, interface=_MANAGER, member=member,
                                           signature=signature, body=body))
        assert reply is not None  # (only a call flagged NO_REPLY_EXPECTED gets none)
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"systemd {member}: {reply.error_name}: {detail}")
        answer: list[Any] = reply.body
        return answer

    async def _wait_job(self, job: str, what: str) -> None:
        result = self._early.pop(job, None)
        if result is None:
            future = self._jobs[job] = asyncio.get_running_loop().create_future()
            try:
                result = await asyncio.wait_for(future, JOB_TIMEOUT)
            except asyncio.TimeoutError:
                raise SystemdError(f"systemd did not finish {what} within {JOB_TIMEOUT:g}s") from None
            finally:
                self._jobs.pop(job, None)
        if result != "done":
            raise SystemdError(f"systemd could not {what}: job {result}")

    async def start_scope(self, unit: str, slice_name: str, pids: list[int], description: str) -> None:
        """Put `pids` in a new transient scope `unit` below `slice_name` and wait until it runs."""
        from dbus_fast import Variant

        bus = await self.connect()
        properties = [["Description", Variant("s", description)], ["Slice", Variant("s", slice_name)],
                      ["PIDs", Variant("au", pids)], ["CollectMode", Variant("s", "inactive-or-failed")]]
        job, = await self._call(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", [unit, "fail", properties, []])
        await self._wait_job(job, f"start {unit} in {slice_name}")

    async def stop_unit(self, unit: str) -> None:
        """Stop `unit` (its processes are killed); a unit that is gone already is fine."""
        bus = await self.connect()
        try:
            job, = await self._call(bus, "StopUnit", "ss", [unit, "replace"])
        except SystemdError as e:
            if "NoSuchUnit" in str(e):
                return
            raise
        await self._wait_job(job, f"stop {unit}")

    async def set_properties(self, unit: str, properties: list[tuple[str, str, Any]]) -> None:
        """Set `unit`'s properties until the next boot (SetUnitProperties, runtime): systemd writes them into the
        unit's cgroup and keeps them across daemon-reload."""
        from dbus_fast import Variant

        bus = await self.connect()
        body = [[name, Variant(signature, value)] for name, signature, value in properties]
        await self._call(bus, "SetUnitProperties", "sba(sv)", [unit, True, body])

    async def units(self, pattern: str) -> list[str]:
        """Names of loaded units matching a glob (for the sweep of what a crash left)."""
        bus = await self.connect()
        listed, = await self._call(bus, "ListUnitsByPatterns", "asas", [[], [pattern]])
        return [entry[0] for entry in listed]

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
