"""Errors of the storage package.

storage/ never imports cri/: the server maps these classes to gRPC status codes in
cri/server/errors.py. Every message names the image, registry or path it is about.
"""


class StorageError(Exception):
    """Base of every error storage reports."""


class InvalidReference(StorageError):
    """The text is not a valid image reference (or id)."""


class ImageNotFound(StorageError):
    """The registry has no such repository, tag or digest, or the store has no such image."""


class ImageInUse(StorageError):
    """A container still uses the image, so it cannot be removed."""


class BlockedRegistry(StorageError):
    """registries.conf blocks pulling from the registry the reference names."""


class AuthError(StorageError):
    """The registry refused our credentials (or we had none)."""


class UnsupportedManifest(StorageError):
    """A manifest we cannot use: schema1, an unknown media type, no matching platform, too big."""


class DigestMismatch(StorageError):
    """Downloaded or stored bytes do not match the digest or size that names them."""


class PullTimeout(StorageError):
    """No bytes arrived for the whole pull-progress timeout."""


class RegistryError(StorageError):
    """The registry failed in a way that is not one of the cases above (5xx, bad answer, network)."""


class TransientRegistryError(RegistryError):
    """A failure worth retrying: a dropped connection, a 5xx, a 429."""


class HostileLayer(StorageError):
    """A layer tries to escape its root, uses an unsafe entry, or is absurdly large."""


class ArchiveError(StorageError):
    """An image archive (OCI layout or docker-archive) is malformed."""


class RegistryConfigError(StorageError):
    """registries.conf or the auth file cannot be read."""


class NoSpace(StorageError):
    """The disk (or quota) under the store filled up; the failed operation left nothing behind."""


class MountError(StorageError):
    """Mounting or unmounting a container root filesystem failed."""
