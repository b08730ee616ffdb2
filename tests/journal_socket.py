"""A datagram socket standing in for journald: receives native-protocol entries (inline or in a memfd)."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from pathlib import Path


def parse_entry(data: bytes) -> dict[str, str]:
    """KEY=value lines, and the binary form KEY\\n<le64 length><value>\\n (systemd's native protocol)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        eq = data.find(b"=", i, nl)
        if eq >= 0:
            fields[data[i:eq].decode()] = data[eq + 1:nl].decode()
            i = nl + 1
        else:
            name = data[i:nl].decode()
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[name] = data[nl + 9:nl + 9 + size].decode()
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return fields


class FakeJournal:
    """Binds `path` and collects entries in a thread until closed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.entries: list[dict[str, str]] = []
        self.via_memfd = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds = array.array("i")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    (fd,) = struct.unpack("i", payload[:4])
                    try:
                        data = os.pread(fd, os.fstat(fd).st_size, 0)
                    finally:
                        os.close(fd)
                    self.via_memfd += 1
            self.entries.append(parse_entry(data))

    def find(self, **wanted: str) -> list[dict[str, str]]:
        return [e for e in list(self.entries) if all(k in e and v in e[k] for k, v in wanted.items())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        self.path.unlink(missing_ok=True)
