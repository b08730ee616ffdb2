"""The terminal of an exec: the pty master the runtime hands over its console socket, read and written without
blocking the event loop."""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import socket
import struct
import termios
from typing import Callable

from cri.streaming.backend import TerminalSize

CONSOLE_TIMEOUT = 30.0


async def receive_console(listener: socket.socket, proc: asyncio.subprocess.Process) -> int | None:
    """The pty master the runtime sends over the console socket (SCM_RIGHTS); None if it exits without one."""
    loop = asyncio.get_running_loop()
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    exited = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({accept, exited}, timeout=CONSOLE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if accept.done():
        conn, _ = accept.result()
    else:
        accept.cancel()
        if proc.returncode is None:
            proc.kill()
            return None
        try:  # the runtime connected and left before our accept ran: the connection waits in the backlog
            conn, _ = listener.accept()
        except BlockingIOError:
            return None
    with conn:
        fds = array.array("i")
        while True:
            try:
                _, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
                break
            except BlockingIOError:
                await wait_fd(conn.fileno(), readable=True)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


class PtyMaster:
    """Non-blocking reads and writes on the pty master; EIO (every slave end closed) reads as end of output."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self.fd = fd

    async def read(self, n: int) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await wait_fd(self.fd, readable=True)
            except OSError as e:
                if e.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await wait_fd(self.fd, readable=False)

    def resize(self, size: TerminalSize) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _resolver(future: asyncio.Future[None]) -> Callable[[], None]:
    """A reader/writer callback that resolves `future` once (the loop may call it again before removal)."""
    def resolve() -> None:
        if not future.done():
            future.set_result(None)
    return resolve


async def wait_fd(fd: int, readable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_reader, loop.remove_reader) if readable else (loop.add_writer, loop.remove_writer)
    add(fd, _resolver(ready))
    try:
        await ready
    finally:
        remove(fd)
