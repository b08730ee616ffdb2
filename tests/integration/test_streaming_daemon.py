"""Exec, attach and port-forward through the real daemon: the gRPC call hands out a URL, our SPDY client uses it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import grpc
import pytest
from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, pod_with_handler, run, status, wait_state
from tests.streamclient import HttpError, SpdyPortForward, SpdySession, WebSocketClient, spdy_exec

pytestmark = pytest.mark.integration


def exec_url(d, cid, cmd, **flags) -> str:
    flags.setdefault("stdout", True)
    return d.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=cmd, **flags), timeout=30).url


def sleeper(d, pod, cfg, name="s", **kwargs) -> str:
    cid = run(d, pod, cfg, container_config(name, ["sleep", "600"], **kwargs))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    return cid


def processes_running(marker: str, exact: bool = False) -> list[int]:
    """Pids whose command line contains marker (is exactly marker, NUL-separated, when exact)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if cmdline == marker.encode() if exact else marker.encode() in cmdline:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_exec_without_tty_reports_output_and_exit_codes(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    url = exec_url(d, cid, ["echo", "hi"], stderr=True)
    assert url.startswith("http://127.0.0.1:")
    result = asyncio.run(spdy_exec(url))
    assert (result.stdout, result.exit_code) == (b"hi\n", 0)
    result = asyncio.run(spdy_exec(exec_url(d, cid, ["sh", "-c", "echo out; echo err >&2; exit 3"], stderr=True)))
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
    payload = os.urandom(1 << 20)
    result = asyncio.run(spdy_exec(exec_url(d, cid, ["cat"], stdin=True), stdin=payload, stderr=False))
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()
    with pytest.raises(HttpError) as err:
        asyncio.run(spdy_exec(url))  # the token was used
    assert err.value.status == 404


def test_exec_requests_kubelet_refuses_are_refused(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    for flags in ({"tty": True, "stderr": True}, {"stdout": False}):
        with pytest.raises(grpc.RpcError) as err:
            d.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], **flags), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.Exec(api_pb2.ExecRequest(container_id="0" * 64, cmd=["true"], stdout=True), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_exec_with_tty_stdin_and_resize(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    url = exec_url(d, cid, ["sh", "-c", "while read line; do stty size; done; exit 7"], tty=True, stdin=True)

    async def session() -> tuple[bytes, int]:
        s = await SpdySession.open(url, stdin=True, tty=True)
        await s.resize(100, 40)
        seen = b""
        while b"40 100" not in seen:  # the resize travels on its own stream; ask until the terminal shows it
            await s.write_stdin(b"again\n")
            seen += await s.read_until(b"\n")
        await s.close_stdin()  # sends Ctrl-D to the terminal: read fails, the loop ends
        result = await s.finish()
        return seen, result.exit_code

    seen, code = asyncio.run(session())
    assert b"40 100" in seen and code == 7
    # What critest checks: a terminal's exact output of a short command, stdin open but unused.
    url = exec_url(d, cid, ["echo", "hello"], tty=True, stdin=True)

    async def short() -> bytes:
        s = await SpdySession.open(url, stdin=True, tty=True)
        out = await s.read_until(b"\n")
        await s.close_stdin()
        result = await s.finish()
        assert result.exit_code == 0
        return out + result.stdout

    assert asyncio.run(short()) == b"hello\r\n"


def test_attach_reaches_the_main_process(env):
    d, pod, cfg = env
    cid = run(d, pod, cfg, container_config("attached", ["sh", "-c", "while read l; do echo got $l; done"],
                                            stdin=True))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    url = d.runtime.Attach(api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True),
                           timeout=30).url
    assert "/attach/" in url

    async def session() -> bytes:
        s = await SpdySession.open(url, stdin=True)
        await s.write_stdin(b"hello\n")
        out = await s.read_until(b"got hello\n")
        await s.close_stdin()  # not stdin_once: detach and leave the container running
        result = await s.finish()
        assert result.exit_code == 0
        return out

    assert b"got hello" in asyncio.run(session())
    assert status(d, cid).status.state == api_pb2.CONTAINER_RUNNING


def test_client_disconnect_kills_the_exec_and_leaks_nothing(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    marker = "4242.5"
    url = exec_url(d, cid, ["sleep", marker], stdin=True)

    async def abandon() -> None:
        s = await SpdySession.open(url, stdin=True, stderr=False)
        deadline = time.monotonic() + 30
        command = f"sleep\0{marker}\0"
        while not processes_running(command, exact=True) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert processes_running(command, exact=True)
        s.conn._writer.transport.abort()

    def leftovers() -> list:
        scratch = [p.name for p in Path("/tmp").iterdir() if p.name.startswith("pycri-exec-")]
        return processes_running(marker) + scratch

    asyncio.run(abandon())
    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == [], d.log_tail()


def test_port_forward_to_the_pod(env):
    d, pod, _ = env  # a host-network pod: its localhost is ours

    async def session() -> list[bool]:
        async def echo(reader, writer):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = await asyncio.to_thread(lambda: d.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=pod, port=[port]), timeout=30).url)
        forwarder = await SpdyPortForward.open(url)

        async def roundtrip(size: int) -> bool:
            data, error = await forwarder.connect(port)
            payload = os.urandom(size)
            sender = asyncio.create_task(data.write(payload))
            received = bytearray()
            while len(received) < size and (chunk := await data.read()):
                received += chunk
            await sender
            await data.close()
            assert await error.read_all() == b""
            return hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()

        try:
            return await asyncio.gather(roundtrip(8 << 20), *(roundtrip(1000 + i) for i in range(10)))
        finally:
            await forwarder.close()
            server.close()

    assert all(asyncio.run(session()))


@pytest.fixture
def pod_network_env(daemon_factory, registry, tmp_path):  # noqa: F811
    """(daemon, pod id, pod config) for a pod on a private bridge network: its own network namespace."""
    from tests.imagebuild import build_busybox_image
    from tests.integration.helpers_containers import IMAGE
    from tests.integration.helpers_sandboxes import PrivateNetwork, remove_all_pods

    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nprefix = "example.test"\n'
                    f'location = "{registry.host}"\ninsecure = true\n')
    registry.push("ctr/busybox", "1", build_busybox_image())
    net = PrivateNetwork(tmp_path)
    net.install()
    try:
        d = daemon_factory({"storage": {"registries_conf": str(conf)}, "network": {"cni_conf_dir": str(net.conf_dir)}})
        d.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=IMAGE)), timeout=60)
        logs = tmp_path / "logs"
        logs.mkdir()
        cfg = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="pf", namespace="stream-test", uid="uid-pf"), hostname="pf",
            log_directory=str(logs))
        pod = d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
        try:
            yield d, pod, cfg
        finally:
            remove_all_pods(d)
    finally:
        net.cleanup()


def test_port_forward_reaches_a_port_only_open_inside_the_pod_netns(pod_network_env):
    d, pod, cfg = pod_network_env
    port = 18081
    run(d, pod, cfg, container_config("echo", ["/bin/busybox", "nc", "-ll", "-p", str(port), "-e", "/bin/busybox",
                                                "cat"]))
    url = d.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod, port=[port]), timeout=30).url

    async def session() -> bytes:
        forwarder = await SpdyPortForward.open(url)
        try:
            deadline = time.monotonic() + 30
            while True:  # until nc listens: each refused attempt is reported on its error stream
                data, error = await forwarder.connect(port)
                await data.write(b"inside the pod\n")
                echoed = await data.read()
                if echoed:
                    await data.close()
                    return echoed
                failure = await error.read_all()
                assert b"error forwarding port" in failure
                if time.monotonic() > deadline:
                    raise AssertionError(failure)
                await asyncio.sleep(0.1)
        finally:
            await forwarder.close()

    assert asyncio.run(session()) == b"inside the pod\n"


def test_attach_with_stdin_once_ends_the_container_input(env):
    # critest's attach spec: a shell with stdin_once; closing our stdin closes the container's, so sh exits.
    d, pod, cfg = env
    cid = run(d, pod, cfg, container_config("once", ["/bin/sh"], stdin=True, stdin_once=True))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING
    url = d.runtime.Attach(api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True),
                           timeout=30).url

    async def session():
        s = await SpdySession.open(url, stdin=True)
        await s.write_stdin(b"echo hello\n")
        out = await s.read_until(b"hello\n")
        await s.close_stdin()
        return out, await s.finish()

    out, result = asyncio.run(session())
    assert (out + result.stdout, result.stderr, result.exit_code) == (b"hello\n", b"", 0)
    assert wait_state(d, cid, api_pb2.CONTAINER_EXITED).state == api_pb2.CONTAINER_EXITED


def test_many_sessions_leave_no_descriptor_or_task_behind(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    fd_dir = Path(f"/proc/{d.proc.pid}/fd")
    marker = f"leak-check-{os.getpid()}"

    async def sessions(count: int) -> None:
        for i in range(count):
            url = await asyncio.to_thread(exec_url, d, cid, ["sh", "-c", f"cat; : {marker}"], stdin=True,
                                          tty=bool(i % 2))
            s = await SpdySession.open(url, stdin=True, tty=bool(i % 2), stderr=False)
            await s.write_stdin(b"x\n")
            await s.read_until(b"x")
            if i % 3 == 0:
                s.conn._writer.transport.abort()  # the client vanishes mid-command
            else:
                await s.close_stdin()
                await s.finish()

    asyncio.run(sessions(3))  # warm up: lazily created descriptors (loggers, selectors) exist from now on
    before = len(list(fd_dir.iterdir()))
    asyncio.run(sessions(24))
    deadline = time.monotonic() + 30
    while (len(list(fd_dir.iterdir())) > before or processes_running(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)  # aborted sessions are torn down asynchronously
    assert len(list(fd_dir.iterdir())) <= before
    assert processes_running(marker) == []


def test_exec_through_crun(env, tmp_path, request):
    request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, cfg = pod_with_handler(d, tmp_path, "crun")
    cid = sleeper(d, pod, cfg, name="on-crun")
    result = asyncio.run(spdy_exec(exec_url(d, cid, ["sh", "-c", "echo out; exit 4"], stderr=True)))
    assert (result.stdout, result.exit_code) == (b"out\n", 4)

    async def tty() -> bytes:
        url = exec_url(d, cid, ["sh", "-c", "echo $TERM"], tty=True, stdin=True)
        s = await SpdySession.open(url, stdin=True, tty=True)
        out = await s.read_until(b"\n")
        await s.close_stdin()
        return out + (await s.finish()).stdout

    # A terminal gets TERM, and keeps the image's PATH (crun's --env replaces the environment).
    assert asyncio.run(tty()) == b"xterm\r\n"
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def test_websocket_exec_and_tunnelled_port_forward(env):
    d, pod, cfg = env
    cid = sleeper(d, pod, cfg)
    url = exec_url(d, cid, ["sh", "-c", "read line; echo got $line; exit 6"], stdin=True, stderr=True)

    async def ws_exec() -> dict[int, bytes]:
        client = await WebSocketClient.open(url, ["v5.channel.k8s.io"])
        await client.send(0, b"over websocket\n")
        await client.close_channel(0)
        return await client.run_to_close()

    channels = asyncio.run(ws_exec())
    assert channels[1] == b"got over websocket\n"
    assert b'"reason":"ExitCode","message":"6"' in channels[3]

    async def tunnelled() -> bytes:
        async def echo(reader, writer):
            writer.write(await reader.read(100))
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pf_url = await asyncio.to_thread(lambda: d.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=pod, port=[port]), timeout=30).url)
        forwarder = await SpdyPortForward.open_over_websocket(pf_url)
        try:
            data, _ = await forwarder.connect(port)
            await data.write(b"tunnelled")
            return await data.read_all()
        finally:
            await forwarder.close()
            server.close()

    assert asyncio.run(tunnelled()) == b"tunnelled"


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_exec_runs_as_the_container_user_with_its_groups(env, handler, tmp_path, request):
    if handler == "crun":
        request.getfixturevalue("crun_host")
    d, _, _ = env
    pod, cfg = pod_with_handler(d, tmp_path, handler)
    cid = sleeper(d, pod, cfg, name="as-user", linux=api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=1000),
                                                               supplemental_groups=[50000])))
    expected = asyncio.run(spdy_exec(exec_url(d, cid, ["sh", "-c", "id -u; id -G; pwd"], stderr=True))).stdout
    assert expected.split()[0] == b"1000" and b"50000" in expected.split()

    async def tty() -> bytes:
        s = await SpdySession.open(exec_url(d, cid, ["sh", "-c", "id -u; id -G; pwd; echo $TERM"], tty=True,
                                            stdin=True), stdin=True, tty=True)
        out = await s.read_until(b"xterm")
        await s.close_stdin()
        return out + (await s.finish()).stdout

    assert asyncio.run(tty()).replace(b"\r\n", b"\n") == expected + b"xterm\n"
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
