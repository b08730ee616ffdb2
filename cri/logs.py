"""Where the daemon's log goes: stderr (text or JSON lines), or the systemd journal with structured fields.

Under systemd, stderr already reaches the journal, but as flat text at one priority. The native protocol
(datagrams of KEY=value fields to /run/systemd/journal/socket) keeps the priority, the logger, the code
location and every `key=value` pair of our messages (rpc=, id=, code=, duration_ms=, ...) as fields that
`journalctl -o verbose` shows and `journalctl RPC=RunPodSandbox` filters on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
from pathlib import Path

SYSLOG_IDENTIFIER = "pycri"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# `rpc=RunPodSandbox id=7 code=OK`: lower-case keys as our messages write them; quoted values may hold spaces.
_PAIR = re.compile(r'(?<![\w.=-])([a-z][a-z0-9_]{0,40})=("[^"]*"|[^\s,;]+)')
_FIXED = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
          "THREAD_NAME", "EXCEPTION"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = logging.Formatter()
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:  # the binary form: name, newline, little-endian 64-bit length, value
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def journal_fields(record: logging.LogRecord, message: str, exception: str = "") -> dict[str, str]:
    """The journal entry of a log record: the standard fields, then the message's key=value pairs."""
    fields = {
        "MESSAGE": message + (f"\n{exception}" if exception else ""),
        "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName or "",
        "THREAD_NAME": record.threadName or "",
    }
    if exception:
        fields["EXCEPTION"] = exception
    for key, value in _PAIR.findall(message):
        name = key.upper()
        if name not in _FIXED and name not in fields:
            fields[name] = value.strip('"')
    return fields


class JournalHandler(logging.Handler):
    """Sends each record as one native-protocol datagram; one too large for a datagram goes in a sealed memfd,
    as sd_journal_send does. When the journal cannot take it, the record is written to stderr instead."""

    def __init__(self, path: Path | str = "/run/systemd/journal/socket", level: int = logging.NOTSET):
        super().__init__(level)
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(1.0)  # journald busy: wait a little, then fall back rather than stall the daemon
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(logging.Formatter(TEXT_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            exception = _PLAIN.formatException(record.exc_info) if record.exc_info else ""
            payload = b"".join(_field(k, v) for k, v in journal_fields(record, message, exception).items())
            self._send(payload)
        except OSError:
            self._fallback.handle(record)
        except Exception:
            self.handleError(record)

    def _send(self, payload: bytes) -> None:
        try:
            self._sock.sendto(payload, self.path)
            return
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        fd = os.memfd_create("pycri-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<inode> when it connects stderr to the journal (systemd.exec(5));
    the check on stderr itself tells a child whose stderr was redirected elsewhere."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def use_journal(target: str, socket_path: Path, environ: dict[str, str] | None = None) -> bool:
    if target == "journal":
        return True
    return target == "auto" and stderr_is_journal(environ) and Path(socket_path).exists()


def setup(config) -> None:
    """Install the one root handler for `config` (log_level, log_format, log_target, journal_socket); called
    at start and again on SIGHUP."""
    level = getattr(logging, config.log_level.upper())
    if use_journal(config.log_target, config.journal_socket):
        handler: logging.Handler = JournalHandler(config.journal_socket)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter() if config.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("grpc").setLevel(max(level, logging.INFO))  # its debug lines are per-call noise
