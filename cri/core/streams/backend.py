"""CoreStreams: the streaming server's backend over the container and sandbox managers."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TYPE_CHECKING

from cri.errors import FailedPrecondition, InvalidArgument
from cri.oci.conmon import BundlePaths, Conmon
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from cri.streaming.backend import InputStream, OutputStream, TerminalSize

from .attach import attach_output, connect_attach_socket
from .command import run_with_pipes, run_with_terminal
from .copy import apply_resizes, copy_in
from .process import container_process, exec_process

if TYPE_CHECKING:  # (the container manager imports cri.core.streams.process)
    from cri.core.containers import ContainerManager
    from cri.core.sandboxes import SandboxManager


class CoreStreams:
    """StreamingBackend for the daemon: ``containers`` is the ContainerManager, ``sandboxes`` the SandboxManager."""

    def __init__(self, containers: ContainerManager, sandboxes: SandboxManager) -> None:
        self._containers = containers
        self._sandboxes = sandboxes

    def _running(self, container_id: str) -> ContainerRecord:
        record = self._containers.get(container_id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running (state {record.state})")
        return record

    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: InputStream | None,
                   stdout: OutputStream | None, stderr: OutputStream | None,
                   resize: AsyncIterator[TerminalSize] | None) -> int:
        if not cmd:
            raise InvalidArgument("exec command must not be empty")
        record = self._running(container_id)
        runtime = self._containers.runtime(record.runtime_handler)
        scratch = Path(tempfile.mkdtemp(prefix="pycri-exec-"))  # 0700; short enough for a socket path
        pid_file = scratch / "pid"
        try:
            process_file = scratch / "process.json"
            process_file.write_text(json.dumps(exec_process(container_process(Path(record.bundle)), cmd, tty)))
            base = [runtime.path, *runtime.global_args, "exec", "--process", str(process_file),
                    "--pid-file", str(pid_file)]
            if tty:
                return await run_with_terminal(base, record.id, scratch / "console", pid_file, stdin, stdout, resize)
            return await run_with_pipes(base + [record.id], pid_file, stdin, stdout, stderr)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def attach(self, container_id: str, tty: bool, stdin: InputStream | None,
                     stdout: OutputStream | None, stderr: OutputStream | None,
                     resize: AsyncIterator[TerminalSize] | None) -> None:
        record = self._running(container_id)
        bundle = Path(record.bundle)
        sock = await connect_attach_socket(BundlePaths(bundle).attach_socket)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        try:
            output = asyncio.create_task(attach_output(sock, stdout, stderr))
            tasks.append(output)
            if resize is not None:
                tasks.append(asyncio.create_task(apply_resizes(resize, lambda s: Conmon.resize(bundle, s.height,
                                                                                                 s.width))))
            if stdin is not None and record.stdin:
                feeder = asyncio.create_task(copy_in(stdin, lambda data: loop.sock_sendall(sock, data)))
                tasks.append(feeder)
                await asyncio.wait({output, feeder}, return_when=asyncio.FIRST_COMPLETED)
                if feeder.done() and not output.done():
                    if record.stdin_once and not tty:
                        sock.shutdown(socket.SHUT_WR)  # conmon closes the container's stdin
                    else:
                        return  # the client ended its input: detach, the container keeps running
            await output
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock.close()

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._sandboxes.open_port(sandbox_id, port)
