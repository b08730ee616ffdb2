"""attach: conmon's attach socket (SOCK_SEQPACKET: each packet from conmon is one pipe byte then data; what we
send is the container's stdin), and resizes through conmon's control fifo."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from cri.errors import FailedPrecondition
from cri.streaming.backend import OutputStream

STDOUT_PIPE, STDERR_PIPE = 2, 3
ATTACH_PACKET = 8192 + 1


async def connect_attach_socket(path: Path) -> socket.socket:
    """Connect to conmon's attach socket; through /proc/self/fd so that long bundle paths still fit sun_path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"container has no attach socket: {e}") from e
    try:
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/{path.name}")
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"cannot attach: conmon's socket {path}: {e}") from e
    finally:
        os.close(dir_fd)
    return sock


async def attach_output(sock: socket.socket, stdout: OutputStream | None, stderr: OutputStream | None) -> None:
    loop = asyncio.get_running_loop()
    while packet := await loop.sock_recv(sock, ATTACH_PACKET):
        sink = {STDOUT_PIPE: stdout, STDERR_PIPE: stderr}.get(packet[0])
        if sink is not None and len(packet) > 1:
            await sink.write(packet[1:])
