"""The composition root: build the runtime's parts from the configuration and serve CRI on a socket."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from cri import logs, sdnotify
from cri.config import Config
from cri.context import Runtime, Service
from hostos import libc
from hostos.cgroups.driver import driver as cgroup_driver

log = logging.getLogger("pycri")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CLEAN_SHUTDOWN_MARKER = "clean-shutdown"
MALLOC_ARENAS = 2


def build_runtime(config: Config, unclean_start: bool = False) -> Runtime:
    """Wire the parts together; those with a lifetime go into `services`, started in this order."""
    from cri.admin.server import AdminServer
    from cri.core.containers import ContainerManager
    from cri.core.events import EventBus
    from cri.core.images import ImageService
    from cri.core.sandboxes import SandboxManager
    from cri.core.streams import CoreStreams
    from cri.streaming.server import StreamingServer
    from netplugins import CNIManager

    rt = Runtime(config=config, unclean_start=unclean_start)
    net = config.network
    rt.cni = CNIManager(net.cni_conf_dir, net.cni_plugin_dirs, config.root / "cni-cache", net.cni_timeout)
    rt.events = EventBus()
    rt.sandboxes = SandboxManager(config.root, config.state_dir, rt.cni, runtime_handlers=config.runtime.handlers,
                                  default_runtime=config.runtime.default_runtime, pod_cidr=lambda: rt.pod_cidr,
                                  runtime_path=config.runtime_path, events=rt.events,
                                  cgroup_manager=config.runtime.cgroup_manager)
    rt.events.set_sandbox_snapshot(rt.sandboxes.snapshot)
    if config.metrics.enable:
        from cri.observe.metrics import Metrics

        rt.metrics = Metrics(rt, config.metrics.address, config.metrics.port)
        rt.services.append(rt.metrics)  # first: a port in use stops the start before anything else ran
    rt.images = ImageService(open_image_store(config, verify=unclean_start), config.storage.pinned_images,
                             on_pull=rt.metrics.pulled if rt.metrics is not None else None)
    rt.containers = ContainerManager(config, rt.sandboxes, rt.images, rt.events)
    # StopPodSandbox/RemovePodSandbox stop or remove the pod's containers first; an image in use stays.
    rt.sandboxes.set_container_hooks(rt.containers.stop_all_in_sandbox, rt.containers.remove_all_in_sandbox)
    rt.images.set_in_use(rt.containers.image_in_use, rt.containers.removals_settled)
    rt.streaming = StreamingServer(config.streaming, CoreStreams(rt.containers, rt.sandboxes))
    rt.services += [rt.cni, rt.sandboxes, rt.containers, rt.streaming,
                    AdminServer(config.admin_socket_path, rt)]
    return rt


def open_image_store(config: Config, verify: bool = False):
    """The image store under <root>/storage, with registries.conf and the auth file from config;
    `verify` checks every blob and layer first (after an unclean shutdown)."""
    from cri.faults import crash_point
    from storage import registries_conf
    from storage.errors import StorageError
    from storage.images import ImageStore

    st = config.storage
    try:
        store = ImageStore(config.root / "storage", registries_conf.load(st.registries_conf, st.registries_conf_dir),
                           st.auth_file, st.pull_progress_timeout, parallel_downloads=st.max_parallel_downloads,
                           durable=st.durable_pulls, checkpoint=crash_point, background_reclaim=True)
    except StorageError as exc:
        raise DaemonError(f"image store: {exc}") from None
    if verify:
        repairs = store.verify()
        for line in repairs:
            log.warning("image store repair after an unclean shutdown: %s", line)
        log.info("image store verified after an unclean shutdown: %d repairs", len(repairs))
    return store


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def lock_root(root: Path) -> int:
    """Hold an exclusive lock on the root for our lifetime: two daemons on one root corrupt it."""
    lock_path = root / "pycri.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DaemonError(f"another pycri daemon (pid {holder}) is already using root {root}; stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file, but refuse to steal one that something still answers on."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise DaemonError(f"socket {path} is in use by another process; stop it or choose another --listen")


def _limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc gives each thread that allocates (grpc's, the pull workers') an arena of its own and keeps what is
    freed in it: after a 200 MB pull that held 7-11 MB more RSS, for no pull speed (bench/memory.py, bench/pull.py).
    Set before any thread starts, as MALLOC_ARENA_MAX would."""
    libc.mallopt(libc.M_ARENA_MAX, arenas)  # nothing where the C library is not glibc


def _become_subreaper() -> None:
    """Orphaned exec processes are re-parented to us, so we can reap them instead of leaving zombies."""
    try:
        libc.set_child_subreaper()
    except OSError as e:
        log.warning("cannot become a child subreaper: %s", e.strerror)


def _start_tracing(config: Config):
    """The OTLP tracer when `[tracing] enable`; opentelemetry is not even imported otherwise."""
    if not config.tracing.enable:
        return None
    from cri.observe import trace
    from cri.observe.tracing import otlp_tracer

    tracer = otlp_tracer(config.tracing.endpoint, config.tracing.sampling_rate_per_million)
    trace.set_tracer(tracer)
    log.info("tracing: OTLP spans to %s", config.tracing.endpoint)
    return tracer


def _watch_children_with_pidfds() -> None:
    """Python 3.11's default child watcher starts a thread for every subprocess, and waits on the event loop
    for it to start: with a wave of pod starts (runc, conmon, CNI plugins) that took ~10 % of the loop's time
    (py-spy, bench/concurrency.py). A pidfd per child, read by the loop, needs no thread; 3.12 does this by
    itself. Our Reaper reaps only the pids it is given, so the two never race (cri/oci/reaper.py)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


def _start_worker_threads() -> None:
    """Every worker thread the calls use, started before the first call: a pool starts a thread when a task finds
    none idle, and the event loop then waits in Thread.start for the new thread to run (stalls of 100 ms and more
    while 50 pods started at once on this 2-core host). The default executor is asyncio's own size."""
    from concurrent.futures import ThreadPoolExecutor

    from cri.oci import runtime
    from hostos import spawn

    size = min(32, (os.cpu_count() or 1) + 4)
    default = ThreadPoolExecutor(size, thread_name_prefix="asyncio")
    asyncio.get_running_loop().set_default_executor(default)
    spawn.prestart(default, size)
    spawn.prestart()
    spawn.prestart(spawn.MONITORS, spawn.MONITORS_SIZE)
    runtime.prestart()


def _freeze_startup_objects() -> None:
    """Take what the start made (modules, classes, the runtime's tables: some 54,000 objects the cyclic collector
    tracks once serving) out of its full collections: each walked them all with the GIL held, 20-150 ms on this
    2-core host with the node VM beside it (55-86 ms seen in a 50-pod wave), while every call waited. They live as
    long as the daemon; a full collection now walks only what was made since (0.1-0.5 ms just after the start).
    Cycles among them that become garbage later (a configuration replaced by SIGHUP) are not reclaimed."""
    import gc

    gc.collect()
    gc.freeze()


async def serve(config: Config, load_config: Callable[[], Config] | None = None) -> None:
    """Run until SIGTERM or SIGINT; then finish in-flight calls and remove the socket. SIGHUP reloads what can
    change live (cri/reload.py) from `load_config()`, which reads the configuration as the start did."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from cri.server.servicer import register

    _watch_children_with_pidfds()
    _start_worker_threads()
    try:  # systemd asked for where it is not PID 1, or its bus unreachable: say so before anything starts
        await cgroup_driver(config.runtime.cgroup_manager).check()
    except OSError as e:
        raise DaemonError(f"cgroup manager: {e.strerror or e}") from None
    for directory, mode in ((config.root, 0o700), (config.state_dir, 0o711)):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, mode)
    lock_fd = lock_root(config.root)
    marker = config.root / CLEAN_SHUTDOWN_MARKER
    unclean = not marker.exists() and any(p.name != "pycri.lock" for p in config.root.iterdir())
    marker.unlink(missing_ok=True)
    _claim_socket(config.socket_path)
    _become_subreaper()

    tracer = _start_tracing(config)
    rt = build_runtime(config, unclean_start=unclean)
    started: list[Service] = []
    watchdog: asyncio.Task | None = None
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ])
    # Before the socket serves: a client that sees it serving may stop the daemon at once (a SIGTERM before the
    # handler is in place would end the process without its clean shutdown), and it then stops once started.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for service in rt.services:
            await service.start()
            started.append(service)
        handlers = register(server, rt)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        _freeze_startup_objects()  # before the first call, which would otherwise wait for the full collection
        old_umask = os.umask(0o117)
        try:
            server.add_insecure_port(config.listen)
            await server.start()
        finally:
            os.umask(old_umask)
        os.chmod(config.socket_path, config.socket_mode)
        log.info("pycri serving CRI v1 on %s (%d RPCs implemented)%s", config.listen, len(handlers),
                 "; the previous run did not shut down cleanly" if unclean else "")
        default = config.runtime.default_runtime
        log.info("default runtime handler %s (%s)", default, config.runtime_path(default) or "not installed")

        if load_config is not None:
            from cri.reload import Reloader

            reloader = Reloader(rt, load_config, logs.setup)
            loop.add_signal_handler(signal.SIGHUP, reloader.signal)
            if _early_sighup:
                reloader.signal()  # one came while the daemon started: apply it now
        sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving CRI v1 on {config.listen}")
        interval = sdnotify.watchdog_interval()
        if interval:
            watchdog = asyncio.create_task(sdnotify.keep_watchdog_fed(interval))
        await stop.wait()
        sdnotify.notify("STOPPING=1\nSTATUS=shutting down")
        log.info("shutting down: finishing in-flight calls")
        await server.stop(grace=10)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await server.stop(grace=None)
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        config.socket_path.unlink(missing_ok=True)
        if tracer is not None:
            tracer.shutdown()  # sends the spans still batched
        marker.touch()
        os.close(lock_fd)
    log.info("pycri stopped")


_early_sighup: list[int] = []


def run(config: Config, load_config: Callable[[], Config] | None = None) -> int:
    _limit_malloc_arenas()
    sdnotify.claim()  # before any runtime or monitor inherits NOTIFY_SOCKET
    logs.setup(config)
    if load_config is not None:
        # Until serve() handles it, a SIGHUP (its default action ends the process) is remembered. A Python
        # handler rather than SIG_IGN: an ignored signal would stay ignored in the runtimes and containers started.
        signal.signal(signal.SIGHUP, lambda signum, frame: _early_sighup.append(signum))
    try:
        asyncio.run(serve(config, load_config))
    except DaemonError as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            log.error("%s: pycri must run as root", e)
            return 1
        raise
    return 0
