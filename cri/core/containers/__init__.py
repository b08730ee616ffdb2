"""The container manager, a package along its seams; ContainerManager (manager.py) is the front the handlers call."""

from .manager import ContainerManager
from .procs import exit_reason, signal_number
from .specgen import container_log_path
from .stats import ContainerStats, PodStats

__all__ = ["ContainerManager", "ContainerStats", "PodStats", "container_log_path", "exit_reason", "signal_number"]
