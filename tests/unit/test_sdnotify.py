"""sd_notify against a real unix datagram socket, as systemd listens on one."""

import asyncio
import os
import socket

import pytest

from cri import sdnotify


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_notify_sends_one_datagram_per_message(listener):
    path, sock = listener
    assert sdnotify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_reaches_an_abstract_socket():
    name = f"pycri-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent():
    assert sdnotify.notify("READY=1", {}) is False


def test_a_socket_nobody_listens_on_is_logged_not_raised(tmp_path, caplog):
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize("env, interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "60000000"}, 30.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(env, interval):
    assert sdnotify.watchdog_interval(env) == interval


def test_watchdog_pings_repeat_until_cancelled(listener):
    path, sock = listener
    sock.setblocking(False)

    async def three_pings_then_cancel() -> list[bytes]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sdnotify.keep_watchdog_fed(0.05, {"NOTIFY_SOCKET": path}))
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 64), 10) for _ in range(3)]
        task.cancel()
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            while True:  # drain the ping that may have been in flight, then nothing more comes
                sock.recv(64)
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            sock.recv(64)
        return pings

    assert asyncio.run(three_pings_then_cancel()) == [b"WATCHDOG=1"] * 3


def test_claim_takes_the_variables_out_of_the_environment_children_inherit(listener, monkeypatch):
    path, sock = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "PATH": "/bin"}
    monkeypatch.setattr(sdnotify, "_claimed", {})
    sdnotify.claim(environ)
    assert environ == {"PATH": "/bin"}
    assert sdnotify.notify("READY=1") and sock.recv(64) == b"READY=1"
    assert sdnotify.watchdog_interval() == 2.0
