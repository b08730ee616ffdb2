"""Domain errors of the runtime core.

Nothing below cri/server imports gRPC: the core and state raise these, and ``cri.server.errors`` maps each class to a
status code in one place.
"""


class CRIError(Exception):
    """Base of every error the core reports to a caller."""


class NotFound(CRIError):
    pass


class InvalidArgument(CRIError):
    pass


class AlreadyExists(CRIError):
    pass


class FailedPrecondition(CRIError):
    pass


class DeadlineExceeded(CRIError):
    pass


class ResourceExhausted(CRIError):
    pass


class Unavailable(CRIError):
    pass


class Internal(CRIError):
    pass
