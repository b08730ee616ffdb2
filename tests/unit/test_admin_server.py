"""The admin socket's server under hostile input: every request gets an answer that says what was wrong with it,
and the server goes on serving (the daemon's integration tests cover the real commands)."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from cri.admin.server import REQUEST_LIMIT, AdminServer


class _Empty:
    def list(self):
        return []

    def find(self, ref):
        return None

    def status(self, ref):
        return None


class _BrokenImages(_Empty):
    def list(self):
        raise TypeError("a bug in the store")


@pytest.fixture
def base():
    path = Path(tempfile.mkdtemp(prefix="adm-", dir="/tmp"))  # short: a unix socket path has 107 bytes at most
    yield path
    shutil.rmtree(path)


async def _exchange(path: Path, data: bytes) -> dict:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    if writer.can_write_eof():
        writer.write_eof()
    line = await reader.readline()
    writer.close()
    return json.loads(line)


def _serve(base: Path, images=None, *exchanges: bytes, max_import_bytes: int = 1 << 30) -> list[dict]:
    rt = SimpleNamespace(config=SimpleNamespace(root=str(base / "root"),
                                                storage=SimpleNamespace(max_import_bytes=max_import_bytes)),
                         images=images or _Empty(),
                         sandboxes=_Empty(), containers=_Empty())
    (base / "root").mkdir()

    async def run():
        server = AdminServer(base / "admin.sock", rt)
        await server.start()
        try:
            assert stat.S_IMODE((base / "admin.sock").stat().st_mode) == 0o600
            return [await _exchange(server.path, data) for data in exchanges]
        finally:
            await server.stop()

    return asyncio.run(run())


def test_hostile_requests_are_answered_and_the_server_goes_on(base):
    answers = _serve(base, None,
                     b"x" * (REQUEST_LIMIT + 10),                 # no newline within the limit
                     b"\xff\xfe not json\n",
                     b"[1, 2]\n",
                     b'{"op": 7}\n',
                     b'{"op": "pods", "extra": 1}\n',
                     b'{"op": "inspect", "id": ["a"]}\n',
                     b'{"op": "import", "pin": "yes"}\n',
                     b'{"op": "pods", "root": 5}\n',
                     b'{"op": "shutdown"}\n',
                     b'{"op": "pods"}\n')
    errors = [a.get("error", "") for a in answers]
    assert errors[0] == f"admin request longer than {REQUEST_LIMIT} bytes"
    assert all(e.startswith("malformed admin request") for e in errors[1:7]), errors[1:7]
    assert "extra" in errors[4] and "'id' of 'inspect' must be str" in errors[5]
    assert answers[7].get("other_root") is True, answers[7]
    assert errors[8] == "unknown admin request 'shutdown'"
    assert answers[9] == {"ok": True, "result": []}


def test_a_failing_request_is_not_called_malformed(base):
    [answer] = _serve(base, _BrokenImages(), b'{"op": "images"}\n')
    assert answer == {"ok": False, "error": "internal error: TypeError: a bug in the store"}


class _Importer(_Empty):
    def __init__(self):
        self.imported = []

    async def import_archive(self, path, pin=False):
        self.imported.append(path.stat().st_size)
        return []


def test_an_import_over_the_size_cap_is_refused_and_leaves_no_spool(base):
    images = _Importer()
    cap = 3 << 20
    answers = _serve(base, images, b'{"op": "import"}\n' + b"x" * (cap + 1), b'{"op": "import"}\n' + b"x" * cap,
                     max_import_bytes=cap)
    assert answers[0] == {"ok": False, "error": "the archive to import is larger than [storage] max_import_bytes "
                                                f"({cap} bytes): raise that setting to import it"}
    assert answers[1] == {"ok": True, "result": []}
    assert images.imported == [cap]
    assert list((base / "root" / "admin-spool").iterdir()) == []
