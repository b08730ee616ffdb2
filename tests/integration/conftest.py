"""Fixtures that run the real daemon, as root, in temporary roots that are cleaned up even on failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conformance.daemon import Daemon
from hostos import cgroups
from tests.imagebuild import build_busybox_image
from tests.integration.helpers_containers import start_env
from tests.integration.helpers_registry import TOKEN_ISSUER, TOKEN_SERVICE, Registry, TokenServer, start_registry
from tests.integration.helpers_sandboxes import installed_network, remove_all_pods

if os.geteuid() != 0:
    pytest.skip("integration tests run the real runtime and need root", allow_module_level=True)


@pytest.fixture
def daemon_factory():
    """Start daemons with extra settings (nested dicts of config keys); all are cleaned up after."""
    started: list[Daemon] = []

    def start(settings: dict | None = None, base: Path | None = None, **kwargs) -> Daemon:
        # The tests name cgroup parents as cgroupfs paths; the systemd driver has tests of its own (and
        # TEST_CGROUP_MANAGER=auto runs the whole suite with what the host would choose).
        settings = dict(settings or {})
        settings["runtime"] = {"cgroup_manager": os.environ.get("TEST_CGROUP_MANAGER", "cgroupfs"),
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


# --- test registries (helpers_registry.py) ---


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("registry")
    gen = start_registry(workdir)
    try:
        yield Registry(next(gen))
    finally:
        gen.close()


@pytest.fixture(scope="session")
def private_registry(tmp_path_factory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("private-registry")
    user, password = "alice", "s3cret-" + os.urandom(4).hex()
    htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                              text=True, timeout=30).stdout
    (workdir / "htpasswd").write_text(htpasswd)
    gen = start_registry(workdir, f"auth:\n  htpasswd:\n    realm: pycri-test\n    path: {workdir / 'htpasswd'}\n")
    try:
        yield Registry(next(gen), credentials=(user, password))
    finally:
        gen.close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("token-registry")
    server = TokenServer(workdir, "bob", "t0ken-" + os.urandom(4).hex())
    gen = None
    try:
        auth = (f"auth:\n  token:\n    realm: {server.realm}\n    service: {TOKEN_SERVICE}\n"
                f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {server.cert}\n")
        gen = start_registry(workdir, auth)
        yield Registry(next(gen), credentials=(server.username, server.password), token_server=server)
    finally:
        if gen is not None:
            gen.close()
        server.close()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("tls-registry")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    gen = start_registry(workdir, tls=(cert, key))
    try:
        yield Registry(next(gen), tls=True)
    finally:
        gen.close()


@pytest.fixture(scope="session")
def busybox_ref(registry) -> str:
    """A busybox image (sh, ls, cat, sleep, ... as applet links) in the session registry."""
    registry.push("library/busybox", "latest", build_busybox_image())
    return f"{registry.host}/library/busybox:latest"


# --- a daemon with the test image and a pod (helpers_containers.py) ---


@pytest.fixture
def env(daemon_factory, registry, tmp_path):
    """(daemon, pod id, pod config): a host-network pod (no CNI needed) and the test image pulled."""
    yield from start_env(daemon_factory, registry, tmp_path)


@pytest.fixture
def net_env(daemon_factory, registry, tmp_path):
    """Like env, but the pod is on a private CNI bridge network."""
    with installed_network(tmp_path) as network:
        yield from start_env(daemon_factory, registry, tmp_path, {"network": {"cni_conf_dir": str(network.conf_dir)}},
                             host_network=False)


# --- a private CNI network (helpers_sandboxes.py) ---


@pytest.fixture
def network(tmp_path, request):
    """The private network; parametrize it indirectly with True to turn ipMasq on."""
    with installed_network(tmp_path, ip_masq=getattr(request, "param", False)) as net:
        yield net


@pytest.fixture
def pods(daemon_factory, network):
    """A daemon on the private network; returns (daemon, network) and removes every pod after."""
    d = daemon_factory({"network": {"cni_conf_dir": str(network.conf_dir)}})
    try:
        yield d, network
    finally:
        remove_all_pods(d)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Every test here runs the real daemon or host tools as root: `-m integration` (make integration, the node VM
    lane) selects them all, also in a file that lacks the module's mark (five did, and were never run there)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
