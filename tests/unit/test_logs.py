"""The journal handler against a real datagram socket standing in for journald, and the choice of target."""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest

from cri import logs
from tests.journal_socket import FakeJournal


@pytest.fixture
def journal(tmp_path):
    j = FakeJournal(tmp_path / "journal.sock")
    yield j
    j.close()


def _logger(journal) -> tuple[logging.Logger, logs.JournalHandler]:
    handler = logs.JournalHandler(journal.path)
    logger = logging.getLogger(f"pycri.test.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler


def _wait(journal, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(journal.entries) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_entries_carry_priority_logger_code_and_the_message_pairs(journal):
    logger, handler = _logger(journal)
    logger.info("rpc=%s id=%d code=%s duration_ms=%.2f", "RunPodSandbox", 7, "OK", 1.5)
    logger.debug("quiet")
    logger.warning('sandbox %s: reason="two words" left', "abc")
    _wait(journal, 3)
    handler.close()
    info, debug, warning = journal.entries
    assert info["MESSAGE"] == "rpc=RunPodSandbox id=7 code=OK duration_ms=1.50"
    assert (info["PRIORITY"], debug["PRIORITY"], warning["PRIORITY"]) == ("6", "7", "4")
    assert info["RPC"] == "RunPodSandbox"
    assert info["ID"] == "7"
    assert info["CODE"] == "OK"
    assert info["DURATION_MS"] == "1.50"
    assert info["SYSLOG_IDENTIFIER"] == "pycri" and info["LOGGER"] == logger.name
    assert info["CODE_FILE"] == __file__
    assert info["CODE_FUNC"] == "test_entries_carry_priority_logger_code_and_the_message_pairs"
    assert warning["REASON"] == "two words"


def test_multiline_and_exceptions_use_the_binary_form(journal):
    logger, handler = _logger(journal)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("failed:\nsecond line")
    _wait(journal, 1)
    handler.close()
    (entry,) = journal.entries
    assert entry["MESSAGE"].startswith("failed:\nsecond line\nTraceback")
    assert "ValueError: bad\nvalue" in entry["EXCEPTION"]
    assert entry["PRIORITY"] == "3"


def test_an_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd(journal):
    logger, handler = _logger(journal)
    logger.info("big %s", "x" * (4 << 20))
    _wait(journal, 1)
    handler.close()
    assert journal.via_memfd == 1
    assert journal.entries[0]["MESSAGE"] == "big " + "x" * (4 << 20)


def test_without_a_journal_records_go_to_stderr(tmp_path, capsys):
    handler = logs.JournalHandler(tmp_path / "absent.sock")
    handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
    handler._fallback.stream = sys.stderr  # capsys swapped stderr after the handler was made
    record = logging.LogRecord("pycri.x", logging.ERROR, __file__, 1, "still %s", ("logged",), None)
    handler.handle(record)
    handler.close()
    assert "ERROR pycri.x: still logged" in capsys.readouterr().err


def test_auto_uses_the_journal_only_when_stderr_is_the_journal_stream(tmp_path, journal):
    st = os.fstat(sys.stderr.fileno())
    mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
    assert logs.use_journal("auto", journal.path, mine)
    assert not logs.use_journal("auto", journal.path, other)
    assert not logs.use_journal("auto", journal.path, {})
    assert not logs.use_journal("auto", tmp_path / "absent.sock", mine)
    assert not logs.use_journal("stderr", journal.path, mine)
    assert logs.use_journal("journal", tmp_path / "absent.sock", {})
