"""netplugins against the host directly: pinned namespaces, connecting into one, and the CNIManager with real plugins."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from netplugins import CNIManager, PodNetwork, connect_in_netns, namespace_alive, pin_namespaces, unpin_namespace
from tests.integration.helpers_sandboxes import PrivateNetwork, veths_on

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def test_pin_sets_hostname_sysctls_and_loopback_then_unpins(tmp_path):
    pinned = asyncio.run(pin_namespaces(tmp_path / "ns", hostname="pinned-host",
                                        sysctls={"net/ipv4/ip_forward": "1", "kernel/shm_rmid_forced": "1"}))
    try:
        assert set(pinned) == {"net", "ipc", "uts"}
        assert all(namespace_alive(p) for p in pinned.values())
        out = subprocess.run(["nsenter", f"--net={pinned['net']}", f"--uts={pinned['uts']}", f"--ipc={pinned['ipc']}",
                              "sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced;"
                              " ip -o link show lo"], capture_output=True, text=True)
        lines = out.stdout.splitlines()
        assert lines[:3] == ["pinned-host", "1", "1"] and "UP" in lines[3]
        assert os.uname().nodename != "pinned-host"
    finally:
        for path in pinned.values():
            unpin_namespace(path)
            unpin_namespace(path)  # idempotent
    assert not any(namespace_alive(p) or p.exists() for p in pinned.values())


def test_a_failing_sysctl_leaves_nothing_pinned(tmp_path):
    with pytest.raises(Exception, match="no_such_sysctl"):
        asyncio.run(pin_namespaces(tmp_path / "ns", sysctls={"net/ipv4/no_such_sysctl": "1"}))
    assert list((tmp_path / "ns").iterdir()) == []


def test_connect_in_netns_reaches_a_server_only_listening_inside(tmp_path):
    before = os.readlink("/proc/thread-self/ns/net")
    pinned = asyncio.run(pin_namespaces(tmp_path / "ns", kinds=("net",)))
    server = subprocess.Popen(["nsenter", f"--net={pinned['net']}", "busybox", "nc", "-l", "-p", "7777", "-e",
                               "echo", "inside"], stdout=subprocess.DEVNULL)
    try:
        async def fetch() -> bytes:
            for _ in range(200):
                try:
                    sock = await connect_in_netns(pinned["net"], 7777)
                    break
                except OSError:
                    await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection(sock=sock)
            data = await reader.read()
            writer.close()
            return data

        assert asyncio.run(fetch()) == b"inside\n"
        assert os.readlink("/proc/thread-self/ns/net") == before  # only the throw-away thread moved
    finally:
        server.kill()
        server.wait()
        unpin_namespace(pinned["net"])


def test_manager_add_survives_a_restart_and_del_tolerates_a_missing_netns(tmp_path):
    net = PrivateNetwork(tmp_path)
    net.install()

    async def scenario() -> None:
        pinned = await pin_namespaces(tmp_path / "ns", kinds=("net",))
        pod = PodNetwork(id="f" * 64, name="p", namespace="ns", uid="u", netns=str(pinned["net"]))
        first = CNIManager(net.conf_dir, ["/usr/lib/cni"], tmp_path / "cache", timeout=30)
        await first.start()
        try:
            result = await first.setup(pod)
            assert result.pod_ips() and net.leases() == result.pod_ips()
            await first.check(pod)
        finally:
            await first.stop()
        (net.conf_dir / "10-test.conflist").unlink()  # DEL must use the cached config, not the current one
        unpin_namespace(pinned["net"])
        second = CNIManager(net.conf_dir, ["/usr/lib/cni"], tmp_path / "cache", timeout=30)
        await second.start()
        try:
            assert second.ready()[0] is False
            await second.teardown(pod)
            await second.teardown(pod)
        finally:
            await second.stop()

    try:
        asyncio.run(scenario())
        assert net.leases() == []
        # The netns was gone before DEL, so its veth goes when the kernel finishes destroying the namespace.
        for _ in range(500):
            if not veths_on(net.bridge):
                break
            time.sleep(0.01)
        assert veths_on(net.bridge) == []
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        net.cleanup()
