"""What every part of the container manager shares: the records (on disk and by id), the reserved names and
abandoned-create claims, one lock per container, the OCI runtimes by handler, conmon, the AppArmor profile
loader, and the event bus."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cri.config import Config
from cri.core import events as ev
from cri.core.claims import Claims
from cri.errors import FailedPrecondition, InvalidArgument
from cri.oci import apparmor
from cri.oci.conmon import Conmon
from cri.oci.runtime import OCIRuntime
from cri.state.container_record import ContainerRecord
from cri.state.index import Index, NameRegistry
from cri.state.store import RecordStore
from hostos.cgroups.driver import driver


class Table:
    """``conmon`` and ``runtimes`` (by handler name) replace the real ones, for tests without root."""

    def __init__(self, config: Config, bus: ev.EventBus, *, conmon: Conmon | None = None,
                 runtimes: Mapping[str, OCIRuntime] | None = None) -> None:
        self.config = config
        self.events = bus
        self.store = RecordStore(Path(config.root) / "containers", ContainerRecord)
        self.dir = Path(config.state_dir) / "containers"  # one bundle directory per container
        self.exit_dir = Path(config.state_dir) / "exits"
        self.cgroups = driver(config.runtime.cgroup_manager)
        self.conmon = conmon or Conmon(config.runtime.conmon, self.exit_dir, self.cgroups)
        self.apparmor = apparmor.Loader()
        self.index: Index[ContainerRecord] = Index("container")
        self.names = NameRegistry("container")
        self.claims = Claims(self.names, self.index)
        self._locks: dict[str, asyncio.Lock] = {}
        self._runtimes: dict[str, OCIRuntime] = dict(runtimes or {})
        self._discarder = ThreadPoolExecutor(1, thread_name_prefix="discard")

    def removed_bundle(self, container_id: str) -> Path:
        """Where a removed container's bundle waits for its deletion (no id starts with '.')."""
        return self.dir / f".removed-{container_id}"

    def discard(self, path: Path) -> None:
        """Delete a moved-aside tree in the background, one at a time (the start-up sweep takes what is left)."""
        self._discarder.submit(shutil.rmtree, path, ignore_errors=True)

    def lock(self, container_id: str) -> asyncio.Lock:
        """The container's own lock; no lock is ever held across containers."""
        return self._locks.setdefault(container_id, asyncio.Lock())

    def forget_lock(self, container_id: str) -> None:
        self._locks.pop(container_id, None)

    def forget_runtime(self, handler: str) -> None:
        """A reload changed the handler's definition: the next use builds its runtime anew."""
        self._runtimes.pop(handler, None)

    def runtime(self, handler: str) -> OCIRuntime:
        name = handler or self.config.runtime.default_runtime
        rt = self._runtimes.get(name)
        if rt is None:
            spec = self.config.runtime.handlers.get(name)
            if spec is None:
                raise InvalidArgument(f"runtime handler {name!r} is not configured")
            path = shutil.which(spec.path)
            if path is None:
                raise FailedPrecondition(f"runtime handler {name!r}: {spec.path} is not installed")
            root = spec.runtime_root or Path(self.config.state_dir) / "runtimes" / name
            rt = self._runtimes[name] = OCIRuntime(name, path, root, extra_args=self.cgroups.runtime_args)
        return rt

    def get(self, ref: str) -> ContainerRecord:
        return self.index.get(ref)

    def find(self, ref: str) -> ContainerRecord | None:
        return self.index.find(ref)

    def save(self, record: ContainerRecord) -> Future[None]:
        # Not fsynced, and written by the store's thread: reconciliation covers a write a killed daemon lost.
        return self.store.save(record, durable=False)

    def publish(self, record: ContainerRecord, kind: int) -> None:
        self.events.publish(ev.ContainerEvent(record.id, record.sandbox_id, kind, time.time_ns()))
