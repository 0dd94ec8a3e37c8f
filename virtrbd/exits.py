"""What a process ended at once must still do: take back the files it had not finished, and say what it leaves.

A command that does not stop within a second of SIGTERM, or that gets a second
signal, is ended with ``os._exit`` (``cli.signals``): no ``finally`` runs then.
Code that creates a file it may have to take back registers the path here for
that moment; its normal paths remove the file themselves and forget it.  What
only the cluster could take back (a restore's temporary image) cannot go then:
it is noted, so the process's last line names it.
"""

from __future__ import annotations

import itertools
import os
import threading

_lock = threading.Lock()
_paths: dict[int, str] = {}
_notes: dict[int, str] = {}
_tokens = itertools.count()


def remove_at_forced_exit(path: os.PathLike | str) -> int:
    """Remove ``path`` if the process is ended at once; returns the token that ``forget`` takes."""
    with _lock:
        token = next(_tokens)
        _paths[token] = os.fspath(path)
    return token


def note_at_forced_exit(text: str) -> int:
    """Something only the cluster can take back, which a forced end leaves: said in the last line."""
    with _lock:
        token = next(_tokens)
        _notes[token] = text
    return token


def forget(token: int) -> None:
    with _lock:
        _paths.pop(token, None)
        _notes.pop(token, None)


def notes() -> list[str]:
    with _lock:
        return list(_notes.values())


def remove_all() -> list[str]:
    """Remove every registered file that still exists (best effort: the process is ending); the removed."""
    with _lock:
        paths = list(_paths.values())
        _paths.clear()
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


#: objects whose cleanup would wait for Ceph without end: a librbd call on them never returned
_stuck: list[object] = []


def keep_until_exit(*objects: object) -> None:
    """Keep ``objects`` referenced until the process ends, never closed: closing an image or shutting a
    connection down while a librbd call on it still runs waits for that call, or aborts the process.  The
    ``virtrbd`` command then ends with ``os._exit`` after its last line (``stuck_calls``)."""
    with _lock:
        _stuck.extend(objects)


def stuck_calls() -> bool:
    """Whether anything was kept by ``keep_until_exit``: the interpreter's own shutdown would finalize it."""
    with _lock:
        return bool(_stuck)
