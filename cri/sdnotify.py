"""systemd's readiness protocol (sd_notify(3)), so pycri.service can be Type=notify with WatchdogSec.

systemd passes $NOTIFY_SOCKET (a unix datagram socket; "@" starts an abstract name) and, when the
unit sets WatchdogSec=, $WATCHDOG_USEC (and $WATCHDOG_PID). The daemon sends READY=1 once the CRI
socket serves, STOPPING=1 when it begins to shut down, and WATCHDOG=1 from the event loop at half
the watchdog interval, so a wedged loop gets the daemon restarted. Without $NOTIFY_SOCKET (not
under systemd) every call does nothing. The protocol is one datagram per message; a dozen lines
of our own are simpler than a dependency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("pycri")
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_claimed: dict[str, str] = {}


def claim(environ: MutableMapping[str, str] = os.environ) -> None:
    """Take systemd's variables out of the process environment (sd_notify's unset_environment):
    runc and crun, started by us, would otherwise see NOTIFY_SOCKET and set up a notify socket
    of their own for every container (runc's path under /run/pycri/runtimes is too long to bind)."""
    for name in _VARIABLES:
        value = environ.pop(name, None)
        if value is not None:
            _claimed[name] = value


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    if addr:
        log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying systemd", addr)
    return None


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not under systemd or the send failed.

    A failed send is logged, never raised: the daemon must keep serving whether or not systemd
    listens."""
    addr = _address(_claimed if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", state, addr.replace("\0", "@"), exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when the watchdog is off
    or meant for another process ($WATCHDOG_PID)."""
    env = _claimed if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; the watchdog is not pinged", env.get("WATCHDOG_USEC"))
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


async def keep_watchdog_fed(interval: float, env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog every `interval` seconds until cancelled."""
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
