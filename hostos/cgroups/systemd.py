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


class Systemd:
    """A connection to the system bus, opened at start (connect) or on first use, and reopened after it drops."""

    def __init__(self) -> None:
        self._bus: MessageBus | None = None
        self._lock = asyncio.Lock()
        self._jobs: dict[str, asyncio.Future[str]] = {}   # our jobs, waited for
        self._early: OrderedDict[str, str] = OrderedDict()  # results signalled before we knew the job was ours

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

    @staticmethod
    async def _call(bus: MessageBus, member: str, signature: str, body: list[Any]) -> list[Any]:
        from dbus_fast import Message, MessageType

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

    async def units(self, pattern: str) -> list[str]:
        """Names of loaded units matching a glob (for the sweep of what a crash left)."""
        bus = await self.connect()
        listed, = await self._call(bus, "ListUnitsByPatterns", "asas", [[], [pattern]])
        return [entry[0] for entry in listed]

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
