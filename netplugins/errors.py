"""Errors of the network layer.

netplugins/ never imports cri/: the server maps these classes to gRPC status codes.
"""


class NetPluginError(Exception):
    """Base of every error raised by netplugins/."""


class NetworkNotReady(NetPluginError):
    """No valid CNI network configuration is loaded yet."""


class CNIError(NetPluginError):
    """A CNI plugin failed; carries the plugin's own error code, message and details (CNI spec section "Error")."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        text = f"CNI plugin {plugin} {command} failed (code {code}): {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)


class CNITimeout(CNIError):
    """A plugin did not answer within the per-call timeout and was killed."""


class NamespaceError(NetPluginError):
    """Creating, pinning or entering a namespace failed."""


class InvalidSysctl(NamespaceError):
    """A requested sysctl does not exist in the pod's namespace or refuses the value: the caller's mistake."""
