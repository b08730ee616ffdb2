"""SIGHUP: apply the configuration that can change while pods run, as crio does on SIGHUP.

Live: logging (log_level, log_format, log_target, journal_socket), registries.conf and its drop-ins (re-read
even when the paths did not change: that is the point of the signal), [storage] pinned_images, the [network] CNI
settings (the conf dir is read again at once), and the runtime handlers (added, changed, default_runtime).
Running pods and containers are never touched: a handler still used by a pod keeps its definition (changing or
removing it is refused with a warning), so their stop and removal find the runtime and root they were created
with. Every other key is read at start only; a changed one is named in a warning. A configuration that does not
load changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, TYPE_CHECKING

from storage.errors import StorageError

from cri.config import Config, ConfigError, RuntimeConfig, RuntimeHandler

if TYPE_CHECKING:  # (the handler context imports the managers)
    from cri.context import Runtime

log = logging.getLogger("pycri.reload")

_LOGGING_KEYS = ("log_level", "log_format", "log_target", "journal_socket")
_LIVE_PREFIXES = (*_LOGGING_KEYS, "storage.registries_conf", "storage.registries_conf_dir", "storage.pinned_images",
                  "network.",
                  "runtime.handlers", "runtime.default_runtime")


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): data}
    return {prefix.rstrip("."): data}


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between the two configurations."""
    a, b = _leaves(old.model_dump(mode="json")), _leaves(new.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _handlers_in_use(rt) -> set[str]:
    return {r.runtime_handler for r in rt.sandboxes.list()}


def _merge_handlers(rt, new: Config) -> dict[str, RuntimeHandler]:
    """The new handler table, keeping the old definition of every handler a pod still uses."""
    old = rt.config.runtime.handlers
    merged = dict(new.runtime.handlers)
    for name in sorted(_handlers_in_use(rt)):
        if name in old and merged.get(name) != old[name]:
            what = "removed" if name not in merged else "changed"
            log.warning("runtime handler %r is %s in the configuration but pods still use it: kept as it was "
                        "until they are gone and the daemon reloads again", name, what)
            merged[name] = old[name]
    return merged


def apply(rt: Runtime, new: Config, setup_logging: Callable[[Config], None]) -> list[str]:
    """Apply the live part of `new` to the running daemon; return the keys applied."""
    from storage import registries_conf

    old = rt.config
    changed = changed_keys(old, new)
    later = [k for k in changed if not k.startswith(_LIVE_PREFIXES)]
    if later:
        log.warning("configuration reload: %s changed but take effect only at the next start", ", ".join(later))

    store_registries = registries_conf.load(new.storage.registries_conf, new.storage.registries_conf_dir)
    handlers = _merge_handlers(rt, new)
    runtime = RuntimeConfig.model_validate({**old.runtime.model_dump(), "handlers": handlers,
                                            "default_runtime": new.runtime.default_runtime})

    # Everything that can fail has run: from here on the new settings go in together.
    if any(k.startswith(_LOGGING_KEYS) for k in changed):
        for key in _LOGGING_KEYS:
            setattr(old, key, getattr(new, key))
        setup_logging(old)
    old.storage.registries_conf = new.storage.registries_conf
    old.storage.registries_conf_dir = new.storage.registries_conf_dir
    rt.images.store.registries = store_registries
    old.storage.pinned_images = new.storage.pinned_images
    rt.images.set_pinned(new.storage.pinned_images)
    replaced = {n for n in old.runtime.handlers if runtime.handlers.get(n) != old.runtime.handlers[n]}
    old.runtime = runtime
    rt.sandboxes.set_runtime_handlers(runtime.handlers, runtime.default_runtime)
    for name in replaced:
        rt.containers.forget_runtime(name)
    old.network = new.network
    if rt.cni is not None:
        try:
            rt.cni.reconfigure(new.network.cni_conf_dir, new.network.cni_plugin_dirs, new.network.cni_timeout)
        except OSError as e:  # the settings are in: the watcher reads the directory again at its next poll
            log.warning("configuration reload: reading the CNI config dir %s failed (%s); retried every poll",
                        new.network.cni_conf_dir, e)
    applied = [k for k in changed if k.startswith(_LIVE_PREFIXES)]
    log.info("configuration reloaded: registries.conf and the CNI config re-read%s",
             f"; changed: {', '.join(applied)}" if applied else "")
    return applied


class Reloader:
    """Runs one reload at a time from SIGHUP: `load()` builds the configuration as the daemon's start did."""

    def __init__(self, rt: Runtime, load: Callable[[], Config], setup_logging: Callable[[Config], None]):
        self._rt = rt
        self._load = load
        self._setup_logging = setup_logging
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="config-reload")
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> list[str] | None:
        async with self._lock:
            log.info("SIGHUP: reloading the configuration")
            try:
                new = await asyncio.to_thread(self._load)
                return apply(self._rt, new, self._setup_logging)
            except (ConfigError, StorageError, ValueError, OSError) as e:
                log.error("configuration reload failed, nothing changed: %s", e)
            except Exception:  # a reload must never take the daemon down
                log.exception("configuration reload failed unexpectedly; the running configuration may be partial")
            return None
