"""librados/librbd exceptions into ``virtrbd.errors``: once, where they are met, naming the object.

A "does not exist" says which object is missing as data (``NotFoundError.missing``), so that a caller
tells a missing image from a missing pool without reading the message.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .. import errors

log = logging.getLogger(__name__)

#: what each errno means to a user, in the words a message uses after the object's name
_CAUSES = {
    errno_codes.ENOENT: "does not exist",
    errno_codes.EEXIST: "already exists",
    errno_codes.EBUSY: "is in use (open by a client or locked)",
    errno_codes.ENOTEMPTY: "has snapshots",
    errno_codes.EPERM: "permission denied",
    errno_codes.EACCES: "permission denied",
    errno_codes.ETIMEDOUT: "timed out",
    errno_codes.ENOSPC: "no space left in the cluster",
    errno_codes.EDQUOT: "pool quota exceeded",
    errno_codes.EROFS: "is read-only",
    errno_codes.EINVAL: "invalid argument",
    errno_codes.ENOTCONN: "not connected to the cluster",
    errno_codes.ESHUTDOWN: "connection to the cluster shut down",
    errno_codes.EOPNOTSUPP: "operation not supported (by the cluster or the image's features)",
    errno_codes.ENOSYS: "operation not supported by this Ceph release",
}


def is_ceph_error(exc: BaseException) -> bool:
    """True for exceptions raised by the rados or rbd bindings (real or fake)."""
    return type(exc).__module__ in ("rados", "rbd") or getattr(exc, "_virtrbd_fake_ceph", False)


def translate(exc: BaseException, what: str, *, timeout: float | None = None,
              missing: str | None = None) -> errors.VirtrbdError:
    """A ``virtrbd.errors`` instance saying what happened to ``what``; ``missing`` names the kind of
    object (``pool``, ``image``, ``snapshot``) a "does not exist" is about."""
    code = abs(getattr(exc, "errno", None) or 0)
    cls = errors.ERRNO_CLASSES.get(code, errors.CephError)
    cause = _CAUSES.get(code)
    if cause is None:
        cause = f"{os.strerror(code).lower()} ({_plain(exc)})" if code else _plain(exc)
    if code == errno_codes.ETIMEDOUT and timeout:
        cause = f"timed out after {timeout:g} s"
    if cls is errors.NotFoundError:
        return errors.NotFoundError(f"{what}: {cause}", errno=code, missing=missing)
    return cls(f"{what}: {cause}", errno=code or None)


def errno_error(ret: int, what: str) -> errors.VirtrbdError:
    """The error for a negative return value of an asynchronous librbd call."""
    code = abs(ret)
    return translate(OSError(code, os.strerror(code)), what)


def _plain(exc: BaseException) -> str:
    """The binding's message without its '[errno N] ' prefix."""
    text = str(exc)
    if text.startswith("[errno"):
        text = text.partition("]")[2].strip()
    return text or type(exc).__name__


@contextmanager
def translated(what: str, *, timeout: float | None = None, missing: str | None = None) -> Iterator[None]:
    """Run a block of binding calls; Ceph errors come out as ``virtrbd.errors``."""
    try:
        yield
    except errors.VirtrbdError:
        raise
    except Exception as exc:
        if not is_ceph_error(exc):
            raise
        log.debug("%s: %r", what, exc)
        raise translate(exc, what, timeout=timeout, missing=missing) from None
