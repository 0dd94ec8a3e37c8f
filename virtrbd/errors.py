"""The one exception family of virtrbd.

Callers of the library, the CLI and the hook only ever see these classes:
librados, librbd and libvirt errors are translated once, where they are met
(``virtrbd.ceph`` and ``virtrbd.libvirt.host``), so that a message always names
the object and the true cause.  Every class carries the process exit code the
CLI uses for it: 2 for a problem with what the user typed or configured, 1 for
a problem met at run time.

No message built here may contain a cephx key; the key is only ever held by
``virtrbd.keyring.CephKey``, whose ``str()`` hides it.
"""

from __future__ import annotations

import errno as _errno


class VirtrbdError(Exception):
    """Base of every error virtrbd raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:  # one line, always
        return " ".join(str(self.args[0]).split()) if self.args else ""


# --- the user's input ------------------------------------------------------

class UsageError(VirtrbdError):
    """A command line, an image spec or an argument that cannot be right."""

    exit_code = 2


class ConfigError(UsageError):
    """virtrbd.conf is missing, unreadable, or holds a bad setting."""


class InvalidSpecError(UsageError):
    """An image spec (POOL/IMAGE[@SNAP]) or object name that Ceph would refuse."""


# --- the cluster -------------------------------------------------------------

class CephError(VirtrbdError):
    """librados or librbd failed; the message names the object and the cause."""


class ConnectionFailedError(CephError):
    """No monitor answered within client_mount_timeout."""


class AuthenticationError(ConnectionFailedError):
    """A monitor answered but refused our cephx credentials."""


class OperationTimeoutError(CephError):
    """An operation did not finish within its rados_*_op_timeout."""


class PermissionDeniedError(CephError):
    """The cephx user lacks the capability for this operation."""


class NotFoundError(CephError):
    """A pool, image or snapshot does not exist; ``missing`` says which of them, where it is known."""

    def __init__(self, message: str, *, errno: int | None = None, missing: str | None = None):
        super().__init__(message, errno=errno)
        self.missing = missing


class AlreadyExistsError(CephError):
    """The object to be created exists already."""


class BusyError(CephError):
    """The image is open by a client (a VM, another agent) or locked."""


class HasSnapshotsError(CephError):
    """The image cannot be removed while it has snapshots."""


class HasDependentsError(CephError):
    """Clones depend on the image or snapshot."""


class NoSpaceError(CephError):
    """The cluster or the pool quota is full."""


# --- the hypervisor -----------------------------------------------------------

class LibvirtError(VirtrbdError):
    """libvirt refused or failed an operation."""


# --- the embedded lab -----------------------------------------------------------

class LabError(VirtrbdError):
    """The embedded lab could not be brought up, inspected or torn down."""


#: errno values librados/librbd report, mapped to the class that says what they mean.
ERRNO_CLASSES: dict[int, type[CephError]] = {
    _errno.ENOENT: NotFoundError,
    _errno.EEXIST: AlreadyExistsError,
    _errno.EBUSY: BusyError,
    _errno.ENOTEMPTY: HasSnapshotsError,
    _errno.EPERM: PermissionDeniedError,
    _errno.EACCES: PermissionDeniedError,
    _errno.ETIMEDOUT: OperationTimeoutError,
    _errno.ENOSPC: NoSpaceError,
    _errno.EDQUOT: NoSpaceError,
}


class InvalidXMLError(UsageError):
    """A document that is not well-formed, too large, declares entities, or is not what was expected."""


# --- backups ---------------------------------------------------------------------

class BackupError(VirtrbdError):
    """A backup, restore or verification could not be done (destination, chain, content)."""


class CorruptBackupError(BackupError):
    """A backup file or its manifest is truncated, damaged, or does not match what it claims to hold."""
