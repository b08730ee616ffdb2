"""The streaming backend over the container core (CoreStreams, backend.py): exec through the OCI runtime
(command.py, terminal.py), attach through conmon (attach.py); process.py makes an exec's OCI process."""

from .backend import CoreStreams

__all__ = ["CoreStreams"]
