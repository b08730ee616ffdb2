"""The handler context: what every CRI handler (cri/server/) and the admin socket reach, typed, so that an editor
and mypy follow a call from a handler down into the room that serves it.

cri/daemon.py's build_runtime fills it in; the managers are set there before any handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cri.config import Config, find_binary

if TYPE_CHECKING:  # (the managers import far more than a handler module needs at import time)
    from cri.core.containers import ContainerManager
    from cri.core.events import EventBus
    from cri.core.images import ImageService
    from cri.core.sandboxes import SandboxManager
    from cri.observe.metrics import Metrics
    from cri.server.answers import ReadAnswers
    from cri.streaming.server import StreamingServer
    from netplugins import CNIManager


class Service(Protocol):
    """A part with a lifetime: started in build order, stopped in reverse."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Runtime:
    """The configuration and the managers of the core."""

    config: Config
    unclean_start: bool = False
    pod_cidr: str = ""
    images: ImageService = field(init=False)
    sandboxes: SandboxManager = field(init=False)
    containers: ContainerManager = field(init=False)
    events: EventBus = field(init=False)
    cni: CNIManager | None = None          # None: no network layer (Status says NetworkPluginNotReady)
    streaming: StreamingServer | None = None
    metrics: Metrics | None = None         # only with [metrics] enable
    answers: ReadAnswers = field(init=False)  # the serialized answers to the small reads (set by servicer.register)
    services: list[Service] = field(default_factory=list)

    def runtime_condition(self) -> tuple[bool, str, str]:
        """Ready when the default runtime and conmon are installed; kubelet asks every few seconds."""
        runtime = self.config.runtime
        handler = runtime.default_runtime
        for name, wanted, reason in ((f"default runtime {handler!r}", runtime.handlers[handler].path,
                                      "OCIRuntimeMissing"), ("conmon", runtime.conmon, "ConmonMissing")):
            if find_binary(wanted) is None:
                return False, reason, f"{name} ({wanted}) is not installed"
        return True, "", ""

    def network_condition(self) -> tuple[bool, str, str]:
        if self.cni is None:
            return False, "NetworkPluginNotReady", "the network layer is not configured"
        return self.cni.ready()

    def set_pod_cidr(self, cidr: str) -> None:
        self.pod_cidr = cidr
