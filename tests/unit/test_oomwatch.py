"""The OOM watch reads a container's kill counter when the kernel notifies memory.events or cgroup.events, so
an OOM kill is known even when systemd removes the scope (and the counter) right after the last process left.
inotify behaves the same on a plain file, which stands in for the cgroup files here."""

from __future__ import annotations

import time
from pathlib import Path

from hostos.cgroups.layout import Layout
from hostos.cgroups.oomwatch import OomWatch


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _cgroup(root: Path, name: str) -> Path:
    d = root / "test.slice" / name
    d.mkdir(parents=True)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    return d


def test_a_kill_read_on_the_emptying_is_remembered_after_the_cgroup_is_gone(tmp_path):
    watch = OomWatch(Layout(unified=tmp_path, v1={}))
    watch.start()
    try:
        killed = _cgroup(tmp_path, "pycri-a.scope")
        quiet = _cgroup(tmp_path, "pycri-b.scope")
        watch.watch("a", "/test.slice/pycri-a.scope")
        watch.watch("b", "/test.slice/pycri-b.scope")
        # the counter moved while its own notification was held back; the emptying is what wakes the watch
        with open(killed / "memory.events", "r+") as f:
            f.write("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
        (killed / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        (quiet / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        assert _until(lambda: watch.killed("a"))
        for f in killed.iterdir():
            f.unlink()
        killed.rmdir()
        assert watch.killed("a")
        assert not watch.killed("b")
        watch.forget("a")
        watch.forget("b")
        assert not watch.killed("a")
    finally:
        watch.close()


def test_a_kill_before_the_watch_is_seen_and_v1_is_left_to_the_exit(tmp_path):
    d = _cgroup(tmp_path, "pycri-c.scope")
    (d / "memory.events").write_text("oom 1\noom_kill 1\n")
    watch = OomWatch(Layout(unified=tmp_path, v1={}))
    watch.start()
    try:
        watch.watch("c", "/test.slice/pycri-c.scope")
        assert watch.killed("c")
    finally:
        watch.close()
    v1 = OomWatch(Layout(unified=tmp_path, v1={"memory": tmp_path}))
    v1.start()
    v1.watch("c", "/test.slice/pycri-c.scope")
    assert not v1.killed("c")
    v1.close()
