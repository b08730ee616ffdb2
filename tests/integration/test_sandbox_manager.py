"""SandboxManager in-process (no gRPC): the port-forward backend and the container hooks."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from cri.core.sandboxes import SandboxManager
from cri.errors import Unavailable
from cri.state.sandbox_record import SandboxSpec
from netplugins import CNIManager
from tests.integration.helpers_sandboxes import PrivateNetwork, mounts_below

pytestmark = pytest.mark.integration


def test_open_port_reaches_a_server_in_the_pod_and_hooks_run_on_stop_and_remove(tmp_path):
    network = PrivateNetwork(tmp_path)
    network.install()
    calls = []

    async def scenario() -> None:
        cni = CNIManager(network.conf_dir, ["/usr/lib/cni"], tmp_path / "cache", timeout=30)
        manager = SandboxManager(tmp_path / "root", tmp_path / "state", cni, runtime_handlers=["runc"],
                                 default_runtime="runc")

        async def stop_all(sandbox_id: str) -> None:
            calls.append(("stop", sandbox_id))

        async def remove_all(sandbox_id: str) -> None:
            calls.append(("remove", sandbox_id))

        manager.set_container_hooks(stop_all, remove_all)
        await cni.start()
        await manager.start()
        record = await manager.run_pod(SandboxSpec(name="pf", namespace="ns", uid="u1"))
        server = subprocess.Popen(["nsenter", f"--net={record.netns_path}", "busybox", "nc", "-l", "-p", "5555",
                                   "-e", "echo", "forwarded"])
        try:
            for _ in range(300):
                try:
                    reader, writer = await manager.open_port(record.id[:8], 5555)
                    break
                except Unavailable:
                    await asyncio.sleep(0.01)
            assert await reader.read() == b"forwarded\n"
            writer.close()
            with pytest.raises(Unavailable):
                await manager.open_port(record.id, 5556)
        finally:
            server.kill()
            server.wait()
        await manager.stop_pod(record.id)
        await manager.remove_pod(record.id)
        assert calls == [("stop", record.id), ("remove", record.id)]
        await cni.stop()

    try:
        asyncio.run(scenario())
        assert network.leases() == [] and not mounts_below(tmp_path / "state")
    finally:
        network.cleanup()
