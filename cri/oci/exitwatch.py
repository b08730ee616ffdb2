"""Watch conmon's exit directory with inotify (ctypes, no thread) and report each container exit once."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from pathlib import Path

from hostos.libc import LIBC, last_error

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def read_exit_status(path: Path) -> int | None:
    """The exit code conmon wrote, or None while the file is absent or incomplete."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


class ExitWatcher:
    """Calls ``on_exit(container_id)`` on the event loop when conmon writes ``<dir>/<container_id>``."""

    def __init__(self, directory: Path | str, on_exit: Callable[[str], None]):
        self.directory = Path(directory)
        self.on_exit = on_exit
        self._fd = -1

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise last_error("inotify_init1")
        if LIBC.inotify_add_watch(fd, os.fsencode(self.directory), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            error = last_error(f"inotify_add_watch {self.directory}")
            os.close(fd)
            raise error
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)

    def _drain(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        names: list[str] = []
        while offset + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:  # events were lost: every file present may be news
                names.extend(os.listdir(self.directory))
            elif name:
                names.append(name)
        for name in dict.fromkeys(names):
            if "." not in name:  # conmon writes a temp file first, then renames it
                self.on_exit(name)

    def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
