"""The real daemon speaks systemd's notify protocol as pycri.service (Type=notify, WatchdogSec) needs."""

import socket
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conformance.daemon import Daemon

pytestmark = pytest.mark.integration


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().splitlines()


def test_ready_when_serving_watchdog_pings_and_stopping_on_sigterm(tmp_path):
    path = tmp_path / "notify.sock"
    daemon = Daemon()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}  # a ping every 0.5 s
        starter = threading.Thread(target=daemon.start, kwargs={"env": env, "timeout": 60})
        starter.start()
        try:
            ready = receive(sock)
            # READY=1 means the socket serves: a health check right now must answer.
            with grpc.insecure_channel(f"unix://{daemon.socket}") as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            starter.join()
            assert "READY=1" in ready
            assert f"MAINPID={daemon.proc.pid}" in ready
            pings = [receive(sock) for _ in range(3)]
            assert pings == [["WATCHDOG=1"]] * 3
            assert daemon.stop() == 0
            after = []
            sock.settimeout(5)
            while "STOPPING=1" not in after:
                after += receive(sock)
        finally:
            starter.join()
            leaks = daemon.cleanup()
    assert not leaks

