"""portforward.k8s.io over SPDY: one data and one error stream per connection, paired by their requestid."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .backend import InputStream, OutputStream, PortForwardRequest, StreamingBackend
from .spdy import SpdyConnection, SpdyStream
from .spdy_frames import PROTOCOL_ERROR, StreamClosed

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
COPY_CHUNK = 128 << 10


def parse_port(raw: str) -> int:
    """A TCP port from a header or query value; ValueError names what was wrong."""
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"invalid port {raw!r}: must be 1-65535")
    return int(raw)


async def forward(backend: StreamingBackend, sandbox_id: str, port: int, source: InputStream, sink: OutputStream,
                  errors: OutputStream) -> None:
    """Connect to port in the sandbox and copy both ways until the pod side ends.

    source/sink are the client's side (read until its half-close / write to it).  A failure to connect or a
    broken pod connection is reported on ``errors`` as text, as kubelet does.
    """
    try:
        reader, writer = await backend.port_forward(sandbox_id, port)
    except Exception as e:  # noqa: BLE001 - reported to the client, which prints it
        await errors.write(f"error forwarding port {port} to pod {sandbox_id}: {e}".encode())
        return

    async def client_to_pod() -> None:
        while chunk := await source.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    upload = asyncio.create_task(client_to_pod())
    try:
        while chunk := await reader.read(COPY_CHUNK):
            await sink.write(chunk)
    except (ConnectionError, OSError) as e:
        await errors.write(f"error forwarding port {port} to pod {sandbox_id}: {e}".encode())
    finally:
        if not upload.done():
            upload.cancel()
        await asyncio.gather(upload, return_exceptions=True)
        writer.close()


@dataclass
class _Pair:
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    timer: asyncio.TimerHandle | None = None


async def _forward_pair(backend: StreamingBackend, sandbox_id: str, data: SpdyStream, error: SpdyStream) -> None:
    try:
        try:
            port = parse_port(data.header("port"))
        except ValueError as e:
            await error.write(str(e).encode())
            return
        await forward(backend, sandbox_id, port, data, data, error)
    except StreamClosed:
        pass
    finally:
        for stream in (data, error):
            try:
                await stream.close()
            except StreamClosed:
                pass


async def serve_spdy(conn: SpdyConnection, request: PortForwardRequest, backend: StreamingBackend,
                     creation_timeout: float) -> None:
    """Pair streams as they arrive and forward each complete pair; stop when the connection ends."""
    pending: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    def expire(request_id: str) -> None:
        pair = pending.pop(request_id, None)
        if pair is not None:
            log.info("port-forward request %s: timed out waiting for its stream pair", request_id)
            for stream in (pair.data, pair.error):
                if stream is not None:
                    stream.reset()

    try:
        while (stream := await conn.accept()) is not None:
            kind, request_id = stream.header("streamtype"), stream.header("requestid")
            pair = pending.setdefault(request_id, _Pair()) if request_id else None
            if pair is None or kind not in ("data", "error") or getattr(pair, kind) is not None:
                stream.reset(PROTOCOL_ERROR)
                continue
            await stream.reply()
            setattr(pair, kind, stream)
            if pair.timer is None:
                pair.timer = loop.call_later(creation_timeout, expire, request_id)
            if pair.data is not None and pair.error is not None:
                pair.timer.cancel()
                del pending[request_id]
                task = asyncio.create_task(_forward_pair(backend, request.sandbox_id, pair.data, pair.error))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await conn.done
    finally:
        for pair in pending.values():
            if pair.timer is not None:  # (a pair whose first stream was refused has none)
                pair.timer.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
