"""The daemon's side of the admin socket (see cri/admin/__init__.py): answers from the managers' indexes on
the event loop; an import is spooled to a file under the root, then loaded in a worker thread."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cri.errors import CRIError, InvalidArgument, NotFound
from cri.observe import trace
from storage.errors import StorageError

if TYPE_CHECKING:  # (the handler context imports the managers)
    from cri.context import Runtime

log = logging.getLogger(__name__)

REQUEST_LIMIT = 64 * 1024
CHUNK = 1 << 20
# The arguments a request may carry besides op and root, by name (each op_* takes some of them).
_ARGUMENT_TYPES: dict[str, type] = {"id": str, "pod": str, "pin": bool}


class OtherRoot(Exception):
    """The command named another root than this daemon's: it must not touch this store."""


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def _pod(record) -> dict:
    return {"id": record.id, "name": record.name, "namespace": record.namespace, "state": record.state,
            "created_at": record.created_at, "ips": list(record.ips), "runtime_handler": record.runtime_handler}


def _container(record) -> dict:
    return {"id": record.id, "name": record.name, "pod_sandbox_id": record.sandbox_id, "image": record.image,
            "state": record.state, "created_at": record.created_at, "exit_code": record.exit_code}


class AdminServer:
    """A Service: listens on `path` (mode 0600) and serves only root."""

    def __init__(self, path: Path, rt: Runtime) -> None:
        self.path = Path(path)
        self._rt = rt
        self._server: asyncio.AbstractServer | None = None
        self._spool = Path(rt.config.root) / "admin-spool"

    async def start(self) -> None:
        self._spool.mkdir(mode=0o700, exist_ok=True)
        for stale in self._spool.iterdir():  # imports a crash cut short
            stale.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)  # the CRI socket's claim has shown no other daemon runs here
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, str(self.path), limit=REQUEST_LIMIT)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:  # read before any answer: unread data would reset the connection
                line = await reader.readline()
            except ValueError:  # longer than REQUEST_LIMIT without a newline (LimitOverrunError, as readline says it)
                line = None
            if _peer_uid(writer) != 0:
                answer = {"ok": False, "error": "the admin socket serves root only"}
            elif line is None:
                answer = {"ok": False, "error": f"admin request longer than {REQUEST_LIMIT} bytes"}
            else:
                answer = await self._answer(reader, line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _handler(self, line: bytes) -> tuple[Callable[..., Any], dict]:
        """The op_* method the request names and its arguments, checked against its signature: ValueError for a
        request that is not `{"op": NAME, ...}` with the arguments NAME takes, of the types it takes."""
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise ValueError("not a JSON object with an op")
        op = req.pop("op")
        root = req.pop("root", None)
        if root is not None and (not isinstance(root, str) or Path(root) != Path(self._rt.config.root)):
            raise OtherRoot(f"this daemon serves root {self._rt.config.root}, not {root}")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise InvalidArgument(f"unknown admin request {op!r}")
        try:
            inspect.signature(handler).bind(None, **req)
        except TypeError as e:
            raise ValueError(str(e)) from None
        for name, value in req.items():
            expected = _ARGUMENT_TYPES.get(name)
            if expected is None or type(value) is not expected:
                raise ValueError(f"argument {name!r} of {op!r} must be {expected.__name__ if expected else 'absent'}")
        return handler, req

    async def _answer(self, reader: asyncio.StreamReader, line: bytes) -> dict:
        try:
            handler, args = self._handler(line)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError included
            return {"ok": False, "error": f"malformed admin request ({exc}): {line[:200]!r}"}
        except OtherRoot as exc:
            return {"ok": False, "error": str(exc), "other_root": True}
        except CRIError as exc:
            return {"ok": False, "error": str(exc)}
        try:
            return {"ok": True, "result": await handler(reader, **args)}
        except ConnectionError:  # the client went away mid-upload: nobody to answer
            raise
        except CRIError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            from cri.server.errors import is_expected, status_for  # storage and network errors read the same

            _, message = status_for(exc)
            if is_expected(exc):
                log.info("admin request failed: %s", message)
            else:
                log.exception("admin request failed unexpectedly")
            return {"ok": False, "error": message}

    # ---- requests ------------------------------------------------------------------------------------

    async def op_images(self, reader) -> list[dict]:
        images = self._rt.images
        return [{**r.model_dump(mode="json"), "pinned": images.pinned(r)} for r in images.list()]

    async def op_pods(self, reader) -> list[dict]:
        return [_pod(r) for r in self._rt.sandboxes.list()]

    async def op_containers(self, reader) -> list[dict]:
        return [_container(r) for r in self._rt.containers.list()]

    async def op_inspect(self, reader, id: str) -> dict:
        """A container, pod or image by id, id prefix or (for images) name, with its full record."""
        if not id:
            raise InvalidArgument("inspect needs an id")
        for kind, find in (("container", self._rt.containers.find), ("pod", self._rt.sandboxes.find),
                           ("image", self._rt.images.status)):
            try:
                record = find(id)
            except StorageError:  # not an image reference at all
                record = None
            if record is not None:
                return {"kind": kind, "record": record.model_dump(mode="json")}
        raise NotFound(f"no container, pod or image {id!r}")

    async def op_timeline(self, reader, pod: str = "") -> list[dict]:
        return trace.timeline.snapshot(pod)

    async def op_import(self, reader, pin: bool = False) -> list[dict]:
        """Spool the archive that follows (at most [storage] max_import_bytes), then load it into the running
        store."""
        limit = self._rt.config.storage.max_import_bytes
        fd, name = tempfile.mkstemp(prefix="import-", suffix=".tar", dir=self._spool)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as spool:
                size = 0
                while chunk := await reader.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise InvalidArgument(f"the archive to import is larger than [storage] max_import_bytes "
                                              f"({limit} bytes): raise that setting to import it")
                    await asyncio.to_thread(spool.write, chunk)
            if path.stat().st_size == 0:
                raise InvalidArgument("the archive to import is empty")
            records = await self._rt.images.import_archive(path, pin=pin)
        finally:
            path.unlink(missing_ok=True)
        log.info("admin: imported %s", ", ".join(" ".join(r.repo_tags) or r.id for r in records))
        return [{"id": r.id, "repo_tags": r.repo_tags, "pinned": self._rt.images.pinned(r)} for r in records]
