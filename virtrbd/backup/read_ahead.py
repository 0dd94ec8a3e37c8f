"""Reading a sparse backup file ahead of use, its data and nothing of its holes.

The kernel's read-ahead cannot tell a hole from data: after a long data
region it reads on through the rest of the file and fills every page of the
holes with zeros (up to ``read_ahead_kb`` per read, 8 MiB on some machines),
or on a share fetches them.  virtrbd knows where the data is (``SEEK_DATA``),
so it turns the kernel's read-ahead off and asks for the next piece of data
itself while it uses the current one: a dense file is read as fast as with
the kernel's read-ahead, a sparse one without its holes.  The figures are in
docs/performance.md.
"""

from __future__ import annotations

import os


def without_read_ahead(fd: int) -> int:
    """``fd`` with the kernel's read-ahead off; returns it."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    except OSError:                 # a filesystem without the advice reads as before
        pass
    return fd


def will_need(fd: int, offset: int, length: int) -> None:
    """Start reading ``[offset, offset + length)`` of ``fd`` in the background (data, never a hole)."""
    if length > 0:
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
