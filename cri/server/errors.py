"""The one place where exceptions become gRPC status codes.

The core, storage and netplugins raise plain exceptions; this table says which code each class
means to a caller. The first matching class in the table wins, so subclasses go first.
"""

from __future__ import annotations

import asyncio

import grpc

from cri import errors
from hostos.cgroups import CgroupBusy
from netplugins import errors as net_errors
from storage import errors as storage_errors

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Internal, grpc.StatusCode.INTERNAL),
    (net_errors.NetworkNotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (net_errors.CNITimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (net_errors.InvalidSysctl, grpc.StatusCode.INVALID_ARGUMENT),
    (net_errors.NetPluginError, grpc.StatusCode.INTERNAL),
    (storage_errors.InvalidReference, grpc.StatusCode.INVALID_ARGUMENT),
    (storage_errors.ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (storage_errors.ImageInUse, grpc.StatusCode.FAILED_PRECONDITION),
    (storage_errors.BlockedRegistry, grpc.StatusCode.PERMISSION_DENIED),
    (storage_errors.AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (storage_errors.UnsupportedManifest, grpc.StatusCode.FAILED_PRECONDITION),
    (storage_errors.DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (storage_errors.HostileLayer, grpc.StatusCode.FAILED_PRECONDITION),
    (storage_errors.PullTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (storage_errors.RegistryError, grpc.StatusCode.UNAVAILABLE),
    (storage_errors.ArchiveError, grpc.StatusCode.INVALID_ARGUMENT),
    (storage_errors.NoSpace, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (storage_errors.RegistryConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (storage_errors.StorageError, grpc.StatusCode.INTERNAL),
    (CgroupBusy, grpc.StatusCode.INTERNAL),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the message a person can act on; unknown errors are INTERNAL."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc) or cls.__name__
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def is_expected(exc: BaseException) -> bool:
    """Whether the error is a known outcome (logged briefly) rather than a bug (logged with a trace)."""
    return any(isinstance(exc, cls) for cls, _ in _CODES)
