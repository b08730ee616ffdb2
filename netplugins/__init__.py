"""Pod networking: CNI configuration, plugin invocation, result cache and pinned namespaces.

Never imports cri/ or storage/.
"""

from .errors import CNIError, CNITimeout, InvalidSysctl, NamespaceError, NetPluginError, NetworkNotReady
from .manager import CNIManager, PodNetwork, PortMapping
from .netns import connect_in_netns, namespace_alive, pin_namespaces, unpin_namespace
from .result import IPConfig, NetworkResult

__all__ = ["CNIError", "CNITimeout", "CNIManager", "IPConfig", "InvalidSysctl", "NamespaceError", "NetPluginError",
           "NetworkNotReady", "NetworkResult", "PodNetwork", "PortMapping", "connect_in_netns", "namespace_alive",
           "pin_namespaces", "unpin_namespace"]
