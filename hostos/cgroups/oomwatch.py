"""OOM kills seen as they happen (cgroup v2).

Reading memory.events at the exit is too late under the systemd driver: systemd removes a container's scope a few
milliseconds after its last process died, often before the exit is handled, and the counter goes with it (seen
with crun in the node VM: OOMKilled reported as Error). The kernel notifies memory.events of the cgroup and each
ancestor when it OOM-kills, and cgroup.events when the last process has left; a thread blocked on inotify reads
the counter on either, while the cgroup still exists (memory.events notifications are rate-limited to one per
10 ms and a deferred one is dropped with the cgroup, so the emptying is the read that counts).
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
from pathlib import Path

from hostos.cgroups.layout import Layout, layout
from hostos.cgroups.stats import oom_kills
from hostos.libc import LIBC, last_error

log = logging.getLogger(__name__)

IN_MODIFY, IN_IGNORED, IN_CLOEXEC = 0x2, 0x8000, 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


class OomWatch:
    """One inotify fd and one thread for every running container's memory.events; a no-op on cgroup v1, where
    a container's memory cgroup stays until we remove it and oom_kills() answers at the exit."""

    def __init__(self, lay: Layout | None = None) -> None:
        self._lay = lay or layout()
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._lock = threading.Lock()
        self._paths: dict[int, tuple[str, str]] = {}  # watch descriptor -> (container id, cgroups path)
        self._watches: dict[str, list[int]] = {}  # container id -> its watch descriptors
        self._killed: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._lay.is_v2 or self._thread is not None:
            return
        fd = LIBC.inotify_init1(IN_CLOEXEC)
        if fd < 0:
            log.warning("OOM kills under the systemd driver may be missed: %s", last_error("inotify_init1"))
            return
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="oom-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
        self._thread = None

    def watch(self, container_id: str, cgroups_path: str) -> None:
        """Follow the container's counter from now on (its cgroup exists: the runtime created it)."""
        if self._thread is None or container_id in self._watches or not cgroups_path.strip("/"):
            return
        assert self._lay.unified is not None
        directory = Path(self._lay.unified, cgroups_path.strip("/"))
        with self._lock:
            wds = self._watches.setdefault(container_id, [])
            for name in ("memory.events", "cgroup.events"):
                wd = LIBC.inotify_add_watch(self._fd, os.fsencode(directory / name), IN_MODIFY)
                if wd < 0:
                    log.debug("container %s: no OOM watch on %s: %s", container_id, directory / name,
                              last_error("inotify"))
                    continue
                self._paths[wd] = (container_id, cgroups_path)
                wds.append(wd)
        self._check(container_id, cgroups_path)  # a kill before the watch was set

    def killed(self, container_id: str) -> bool:
        return container_id in self._killed

    def forget(self, container_id: str) -> None:
        """The exit is recorded; the kernel drops the watch itself when the cgroup goes (IN_IGNORED)."""
        with self._lock:
            for wd in self._watches.pop(container_id, []):
                if self._paths.pop(wd, None) is not None:
                    LIBC.inotify_rm_watch(self._fd, wd)
            self._killed.discard(container_id)

    def _check(self, container_id: str, cgroups_path: str) -> None:
        if oom_kills(cgroups_path, self._lay) > 0:
            self._killed.add(container_id)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            data = os.read(self._fd, 64 * 1024)
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                with self._lock:
                    target = self._paths.pop(wd, None) if mask & IN_IGNORED else self._paths.get(wd)
                if target is not None and mask & IN_MODIFY:
                    self._check(*target)
