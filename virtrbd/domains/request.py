"""What a domain snapshot may be asked, checked before libvirt or Ceph is: cheap to import for the CLI."""

from __future__ import annotations

import math

from ..errors import UsageError
from ..spec import check_name

QUIESCE = ("auto", "require", "off")
#: seconds a guest may stay frozen or paused before the guard undoes it (Windows' VSS gives itself 10 s as well)
DEFAULT_FREEZE_TIMEOUT = 10.0


def check_request(snapshot: str, quiesce: str, freeze_timeout: float) -> None:
    """Bad input is refused, in one line, before anything is asked of libvirt or Ceph."""
    check_name("snapshot", snapshot)
    if quiesce not in QUIESCE:
        raise UsageError(f"invalid quiesce {quiesce!r}: one of {', '.join(QUIESCE)}")
    if isinstance(freeze_timeout, bool) or not isinstance(freeze_timeout, (int, float)) \
            or not math.isfinite(freeze_timeout) or freeze_timeout <= 0:
        raise UsageError(f"invalid freeze timeout {freeze_timeout!r}: a number of seconds above 0")
