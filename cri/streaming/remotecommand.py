"""The remotecommand protocols (exec and attach) kubelet clients speak, over SPDY streams.

Versions, newest first: v4 reports the outcome on the error stream as a JSON metav1.Status carrying the exit
code; v3 adds the resize stream; v2 and v1 (channel.k8s.io) write only a failure message.  The session logic
(``run_session``) does not care about the transport: the WebSocket variant in ``websocket.py`` reuses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from .backend import AttachRequest, ExecRequest, InputStream, OutputStream, StreamingBackend, TerminalSize
from .spdy import SpdyConnection, SpdyStream
from .spdy_frames import REFUSED_STREAM, StreamClosed

log = logging.getLogger(__name__)

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
SPDY_PROTOCOLS = (V4, V3, V2, V1)
_RESIZE_PROTOCOLS = {V4, V3}

MAX_RESIZE_MESSAGE = 4096

Status = dict[str, Any]  # a metav1.Status as JSON


# --- statuses (pure)


def success_status() -> Status:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int, cmd: list[str] | tuple[str, ...] = ()) -> Status:
    """What kubelet reports for a non-zero exit: clients read the code from the ExitCode cause."""
    what = f"command {list(cmd)!r}" if cmd else "command"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what} exited with {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error_status(message: str) -> Status:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode_status(status: Status, as_json: bool) -> bytes:
    """v4 and later: the Status as compact JSON; older protocols: only a failure's message, as text."""
    if as_json:
        return json.dumps(status, separators=(",", ":")).encode()
    return b"" if status["status"] == "Success" else status["message"].encode()


def parse_resize_events(buffer: bytearray) -> list[TerminalSize]:
    """Pop every complete {"Width","Height"} object off the front of buffer (the client's JSON stream)."""
    decoder = json.JSONDecoder()
    sizes = []
    text = buffer.decode("latin-1")  # one char per byte, so positions map back onto the buffer
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):  # incomplete so far, or hostile nesting
            break
        pos = end
        if isinstance(obj, dict):
            width, height = obj.get("Width"), obj.get("Height")
            if isinstance(width, int) and isinstance(height, int) and 0 <= width < 65536 and 0 <= height < 65536:
                sizes.append(TerminalSize(width, height))
    del buffer[:pos]
    return sizes


async def resize_events(source: InputStream) -> AsyncIterator[TerminalSize]:
    """Terminal sizes as the client sends them, until it closes the stream or sends garbage."""
    buffer = bytearray()
    while chunk := await source.read(MAX_RESIZE_MESSAGE):
        buffer += chunk
        for size in parse_resize_events(buffer):
            yield size
        if len(buffer) > MAX_RESIZE_MESSAGE:
            return


# --- one session, any transport


class ClientOutput(OutputStream, Protocol):
    """An output stream to the client that can also be ended (SPDY FIN; a no-op on WebSocket channels)."""

    async def close(self) -> None: ...


class StatusSink:
    """Where the outcome goes: a writable stream plus the protocol's status format."""

    def __init__(self, stream: ClientOutput, as_json: bool) -> None:
        self.stream, self.as_json = stream, as_json

    async def report(self, status: Status) -> None:
        data = encode_status(status, self.as_json)
        if data:
            await self.stream.write(data)
        await self.stream.close()


@dataclass
class SessionStreams:
    stdin: InputStream | None
    stdout: ClientOutput | None
    stderr: ClientOutput | None
    resize: AsyncIterator[TerminalSize] | None
    status: StatusSink


async def run_session(backend: StreamingBackend, request: ExecRequest | AttachRequest, streams: SessionStreams,
                      client_gone: Awaitable[object]) -> None:
    """Run exec/attach, then end stdout/stderr and report the outcome; cancel it all if the client leaves."""
    work: Coroutine[Any, Any, int | None]  # exec's exit code; attach has none
    if isinstance(request, ExecRequest):
        work = backend.exec(request.container_id, list(request.cmd), request.tty, streams.stdin, streams.stdout,
                            streams.stderr, streams.resize)
    else:
        work = backend.attach(request.container_id, request.tty, streams.stdin, streams.stdout, streams.stderr,
                              streams.resize)
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, asyncio.ensure_future(client_gone)}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    try:
        code = task.result()
    except StreamClosed:
        return  # the client is gone; nobody to report to
    except Exception as e:  # noqa: BLE001 - every failure is reported to the client, not raised into the server
        log.warning("streaming %s in %s failed: %s", type(request).__name__, request.container_id, e)
        status = internal_error_status(f"error executing command in container: {e}")
    else:
        cmd = request.cmd if isinstance(request, ExecRequest) else ()
        status = exit_code_status(code, cmd) if code else success_status()
    try:
        for out in (streams.stdout, streams.stderr):
            if out is not None:
                await out.close()
        await streams.status.report(status)
    except StreamClosed:
        pass


# --- SPDY


def expected_stream_types(request: ExecRequest | AttachRequest, protocol: str) -> set[str]:
    """The streams the client must open for this request, as kubelet counts them."""
    wanted = {"error"}
    if request.stdin:
        wanted.add("stdin")
    if request.stdout:
        wanted.add("stdout")
    if request.stderr and not request.tty:
        wanted.add("stderr")
    if request.tty and protocol in _RESIZE_PROTOCOLS:
        wanted.add("resize")
    return wanted


async def gather_spdy_streams(conn: SpdyConnection, wanted: set[str], timeout: float) -> dict[str, SpdyStream] | None:
    """Accept the client's streams until every wanted type is there; None on timeout or disconnect."""
    streams: dict[str, SpdyStream] = {}
    try:
        async with asyncio.timeout(timeout):
            while not wanted <= streams.keys():
                stream = await conn.accept()
                if stream is None:
                    return None
                kind = stream.header("streamtype")
                if kind not in wanted or kind in streams:
                    stream.reset(REFUSED_STREAM)
                    continue
                await stream.reply()
                streams[kind] = stream
    except TimeoutError:
        log.info("timed out waiting for the client to create streams %s", sorted(wanted - streams.keys()))
        return None
    return streams


async def refuse_further_streams(conn: SpdyConnection) -> None:
    while (stream := await conn.accept()) is not None:
        stream.reset(REFUSED_STREAM)


async def serve_spdy(conn: SpdyConnection, protocol: str, request: ExecRequest | AttachRequest,
                     backend: StreamingBackend, creation_timeout: float) -> None:
    streams = await gather_spdy_streams(conn, expected_stream_types(request, protocol), creation_timeout)
    if streams is None:
        return
    refuser = asyncio.create_task(refuse_further_streams(conn))
    try:
        resize = streams.get("resize")
        await run_session(backend, request, SessionStreams(
            stdin=streams.get("stdin"),
            stdout=streams.get("stdout"),
            stderr=streams.get("stderr"),
            resize=resize_events(resize) if resize else None,
            status=StatusSink(streams["error"], as_json=protocol == V4),
        ), conn.done)
    finally:
        refuser.cancel()
