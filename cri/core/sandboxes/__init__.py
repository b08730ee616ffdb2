"""The sandbox manager, a package along its seams; SandboxManager (manager.py) is the front the handlers call."""

from .manager import SandboxManager

__all__ = ["SandboxManager"]
