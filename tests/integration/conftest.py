"""Fixtures that run the real daemon, as root, in temporary roots that are cleaned up even on failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conformance.daemon import Daemon
from hostos import cgroups
from tests.integration.conftest_registry import *  # noqa: F401,F403  (registry fixtures)

if os.geteuid() != 0:
    pytest.skip("integration tests run the real runtime and need root", allow_module_level=True)


@pytest.fixture
def daemon_factory():
    """Start daemons with extra settings (nested dicts of config keys); all are cleaned up after."""
    started: list[Daemon] = []

    def start(settings: dict | None = None, base: Path | None = None, **kwargs) -> Daemon:
        # The tests name cgroup parents as cgroupfs paths; the systemd driver has tests of its own (and
        # PYCRI_TEST_CGROUP_MANAGER=auto runs the whole suite with what the host would choose).
        settings = dict(settings or {})
        settings["runtime"] = {"cgroup_manager": os.environ.get("PYCRI_TEST_CGROUP_MANAGER", "cgroupfs"),
                               **settings.get("runtime", {})}
        d = Daemon(settings, base)
        started.append(d)
        return d.start(**kwargs)

    yield start
    leaks = []
    for d in started:
        tail = d.log_tail()
        found = d.cleanup()
        if found:
            leaks.append(f"{d.base}: {found}\n--- daemon log ---\n{tail}")
    assert not leaks, "the runtime left state behind:\n" + "\n".join(leaks)


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    """A daemon with default settings, no CNI network and no registries."""
    return daemon_factory()


@pytest.fixture(scope="session")
def crun_host():
    """crun refuses a cgroup v1 hybrid host while cgroup2 still owns a controller (hugetlb on these machines):
    mount each such controller under v1, as `pycri check` tells an operator to. The mount stays: unmounting
    cannot hand the controller back to cgroup2 while any cgroup of it lives on (a dying one is enough), and
    it would then be in no mounted hierarchy at all. Tests of the crun handler request this fixture
    (request.getfixturevalue) and are skipped only if the mount fails."""
    lay = cgroups.layout()
    if cgroups.crun_hybrid_problem(lay):
        for controller in (lay.unified / "cgroup.controllers").read_text().split():
            target = cgroups.CGROUP_ROOT / controller
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", "cgroup", "-o", controller, "cgroup", str(target)], capture_output=True)
    problem = cgroups.crun_hybrid_problem()
    if problem:
        pytest.skip(problem)
