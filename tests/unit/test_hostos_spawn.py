"""Children started and waited for in threads (hostos.spawn), and a CNI plugin run through it: output, exit
status and stderr come back; a timeout or a cancelled caller kills the child (its whole process group when asked)
and reaps it; nothing keeps running."""

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hostos import spawn
from netplugins.errors import CNIError, CNITimeout
from netplugins.invoke import exec_plugin


def _gone(pid: int, wait: float = 5.0) -> bool:
    """The pid names no live process (a zombie left to init counts as gone only once reaped)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def _script(tmp_path: Path, body: str, name: str = "child") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_output_status_and_stdin_come_back(tmp_path):
    prog = _script(tmp_path, 'cat; echo oops >&2; exit 3\n')

    async def scenario() -> spawn.Output:
        proc = await spawn.popen([str(prog)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return await spawn.communicate(proc, b"hello", timeout=10)

    done = asyncio.run(scenario())
    assert done == spawn.Output(3, b"hello", b"oops\n", timed_out=False)


def test_a_timeout_kills_the_whole_group_and_keeps_what_it_wrote(tmp_path):
    pids = tmp_path / "pids"
    prog = _script(tmp_path, f'sleep 600 & echo $! > {pids}; echo started >&2; sleep 600\n')

    async def scenario() -> tuple[spawn.Output, int]:
        proc = await spawn.popen([str(prog)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        return await spawn.communicate(proc, timeout=0.5, group=True), proc.pid

    done, pid = asyncio.run(scenario())
    assert done.timed_out and done.returncode == -9 and done.stderr == b"started\n"
    assert _gone(pid) and _gone(int(pids.read_text()))


def test_a_cancelled_caller_leaves_nothing_running(tmp_path):
    pids = tmp_path / "pids"
    prog = _script(tmp_path, f'sleep 600 & echo $! > {pids}; sleep 600\n')

    started: list[subprocess.Popen] = []

    async def call() -> spawn.Output:  # as exec_plugin calls them
        proc = await spawn.popen([str(prog)], stdout=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        return await spawn.communicate(proc, timeout=600, group=True)

    async def scenario() -> int:
        task = asyncio.create_task(call())
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert started[0].returncode is not None  # reaped before the cancellation went on
        return started[0].pid

    pid = asyncio.run(scenario())
    assert _gone(pid) and _gone(int(pids.read_text()))


def test_a_caller_cancelled_during_the_spawn_gets_the_child_killed(tmp_path, monkeypatch):
    started: list[subprocess.Popen] = []
    entered = threading.Event()
    real = subprocess.Popen

    def slow_popen(*args, **kwargs):
        entered.set()
        time.sleep(0.3)  # the fork/exec still under way when the caller gives up
        proc = real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", slow_popen)

    async def scenario() -> None:
        task = asyncio.create_task(spawn.popen(["sleep", "600"], start_new_session=True))
        while not entered.is_set():  # the spawn has begun in its thread (a loaded host may take a while)
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(started) == 1 and started[0].returncode is not None and _gone(started[0].pid)


def test_the_loop_keeps_answering_while_children_start(tmp_path, monkeypatch):
    real = subprocess.Popen

    def slow_popen(*args, **kwargs):
        time.sleep(0.2)  # a spawn that holds its thread (a vfork waiting for a slow exec)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", slow_popen)

    async def scenario() -> float:
        async def one() -> None:
            proc = await spawn.popen(["true"])
            await spawn.wait(proc)

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(4)))
        elapsed = time.monotonic() - t0
        tick.cancel()
        return ticks / elapsed

    assert asyncio.run(scenario()) > 20  # ~100 ticks/s: the loop was never held for the spawns


def test_conmon_starts_while_every_plugin_thread_is_busy(tmp_path):
    """A wave of CNI plugins (each holds its thread for its whole run) fills the shared pool: conmon, started from
    its own pool, does not queue behind them."""
    gate = tmp_path / "gate"
    plugin = _script(tmp_path, f'while [ ! -e {gate} ]; do sleep 0.05; done\n', "slow-plugin")

    async def scenario() -> float:
        async def plugin_run() -> spawn.Output:
            proc = await spawn.popen([str(plugin)], stdout=subprocess.PIPE, start_new_session=True)
            return await spawn.communicate(proc, timeout=30, group=True)

        plugins = [asyncio.create_task(plugin_run()) for _ in range(spawn._POOL_SIZE + 8)]
        await asyncio.sleep(0.5)  # every shared thread now waits in a plugin; 8 more plugins queue
        opening = asyncio.get_running_loop().call_later(5, gate.touch)  # behind the plugins, conmon waits for it
        t0 = time.monotonic()
        proc = await spawn.popen(["true"], spawn.MONITORS, stderr=subprocess.PIPE)
        done = await spawn.communicate(proc, timeout=10, pool=spawn.MONITORS)
        elapsed = time.monotonic() - t0
        opening.cancel()
        gate.touch()
        outputs = await asyncio.gather(*plugins)
        assert done.returncode == 0 and [o.returncode for o in outputs] == [0] * len(plugins)
        return elapsed

    assert asyncio.run(scenario()) < 4


# --- a CNI plugin run through it ----------------------------------------------------------------------------

ENV = {"CNI_COMMAND": "ADD", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def test_a_plugin_gets_its_config_and_its_result_comes_back(tmp_path):
    plugin = _script(tmp_path, 'cat\n', "echo-plugin")
    assert asyncio.run(exec_plugin(plugin, ENV, b'{"cniVersion":"1.0.0"}', 10)) == b'{"cniVersion":"1.0.0"}'


def test_a_plugin_error_carries_its_code_and_stderr(tmp_path):
    coded = _script(tmp_path, 'echo \'{"code": 7, "msg": "no address"}\'; exit 1\n', "coded")
    with pytest.raises(CNIError) as err:
        asyncio.run(exec_plugin(coded, ENV, b"{}", 10))
    assert err.value.code == 7 and err.value.msg == "no address"
    bare = _script(tmp_path, 'echo "iptables: permission denied" >&2; exit 2\n', "bare")
    with pytest.raises(CNIError) as err:
        asyncio.run(exec_plugin(bare, ENV, b"{}", 10))
    assert "exit status 2" in str(err.value) and "iptables: permission denied" in str(err.value)


def test_a_plugin_that_hangs_is_killed_with_what_it_started(tmp_path):
    pids = tmp_path / "pids"
    plugin = _script(tmp_path, f'sleep 600 & echo $! > {pids}; echo "waiting for the lock" >&2; sleep 600\n',
                     "hang")
    with pytest.raises(CNITimeout) as err:
        asyncio.run(exec_plugin(plugin, ENV, b"{}", 0.5))
    assert "timed out after 0.5s" in str(err.value) and "waiting for the lock" in str(err.value)
    assert _gone(int(pids.read_text()))


def test_prestart_starts_every_thread_of_a_pool_before_any_task():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(5, thread_name_prefix="prestart-test")
    try:
        spawn.prestart(pool, 5)
        deadline = time.monotonic() + 10
        while sum(t.name.startswith("prestart-test") for t in threading.enumerate()) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        real_start = threading.Thread.start
        started = []
        threading.Thread.start = lambda self: (started.append(self), real_start(self))[1]
        try:
            assert [f.result() for f in [pool.submit(lambda: 1) for _ in range(5)]] == [1] * 5
        finally:
            threading.Thread.start = real_start
        assert started == []  # every task found a thread already running
    finally:
        pool.shutdown()
