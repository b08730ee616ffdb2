"""The `pycri` command's side of the admin socket (blocking; one request per connection)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20


class AdminError(Exception):
    """The daemon refused or failed the request; the message is its own."""


class NotRunning(Exception):
    """No daemon answers on the admin socket, or the one that does serves another root than asked."""


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise NotRunning(f"no pycri daemon answers on {path}") from exc
    except PermissionError:
        sock.close()
        raise AdminError(f"{path}: permission denied (the admin socket is root's)") from None
    return sock


def request(path: Path, op: str, body: BinaryIO | Path | None = None, **args: Any) -> Any:
    """Send one request (with `body` streamed after it: a file object, or a directory sent as a tar stream)."""
    with connect(path) as sock:
        try:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            if body is not None:
                with sock.makefile("wb", buffering=CHUNK) as out:
                    if isinstance(body, Path):  # an OCI layout directory: as a tarball of its contents
                        with tarfile.open(fileobj=out, mode="w|") as tar:
                            for entry in sorted(os.listdir(body)):
                                tar.add(body / entry, arcname=entry)
                    else:
                        shutil.copyfileobj(body, out, CHUNK)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon stopped reading: its answer says why
        with sock.makefile("rb") as answers:
            line = answers.readline()
    if not line:
        raise AdminError("the daemon closed the connection without an answer (see its log)")
    answer = json.loads(line)
    if answer.get("other_root"):
        raise NotRunning(answer["error"])
    if not answer.get("ok"):
        raise AdminError(answer.get("error") or "failed")
    return answer.get("result")
