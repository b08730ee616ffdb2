"""Fixtures that run the real daemon, as root, in temporary roots that are cleaned up even on failure."""

from __future__ import annotations

import os

import pytest

from conformance.daemon import Daemon
from tests.integration.conftest_registry import *  # noqa: F401,F403  (registry fixtures)

if os.geteuid() != 0:
    pytest.skip("integration tests run the real runtime and need root", allow_module_level=True)


@pytest.fixture
def daemon_factory():
    """Start daemons with extra settings (nested dicts of config keys); all are cleaned up after."""
    started: list[Daemon] = []

    def start(settings: dict | None = None, **kwargs) -> Daemon:
        d = Daemon(settings)
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
