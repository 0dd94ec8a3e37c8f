"""One malloc arena for the whole process, set before its first thread.

glibc gives a thread that allocates before ``M_ARENA_MAX`` is set an arena of
its own, and afterwards hands its arenas out to new threads in turn.  The
``virtrbd`` command starts its signal watcher first; a backup set the limit
later, and then half of librados' threads allocated in the watcher's arena:
a buffer freed in one arena was not reused by the other, and a backup's peak
RSS came out 10-20 MiB higher in some runs than in others
(docs/performance.md).  ``rbd_io.return_large_buffers_to_the_system`` tunes
the rest for the commands that move data.
"""

from __future__ import annotations

M_ARENA_MAX = -8


def mallopt(option: int, value: int) -> bool:
    """glibc's ``mallopt``; False where the C library is not glibc (or refuses the setting)."""
    try:
        import ctypes
        return bool(ctypes.CDLL(None).mallopt(option, value))
    except (OSError, AttributeError):
        return False


def one_arena() -> bool:
    """Every thread allocates from the main arena; False where the C library is not glibc."""
    return mallopt(M_ARENA_MAX, 1)
