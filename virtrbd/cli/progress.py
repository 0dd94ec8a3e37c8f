"""The one progress renderer of the command: a line on stderr, redrawn in place, only on a terminal."""

from __future__ import annotations

import sys
import time

from ..units import format_size

#: seconds between two redraws of the line (the last one is always drawn)
REDRAW = 0.2


class TerminalProgress:
    """``progress(done, total)``: percent, rate (when ``counts_bytes``) and time left, on one line.

    ``counts_bytes``: done and total are bytes, so a rate is shown; librbd's own
    callbacks (flatten, rollback) count objects and show none.  Returns 0, which
    librbd's callbacks take as "go on".
    """

    def __init__(self, label: str, *, counts_bytes: bool = True):
        self.label = label
        self.counts_bytes = counts_bytes
        self.started = time.monotonic()
        self._last = 0.0
        self._finished = False

    def __call__(self, done: int, total: int) -> int:
        now = time.monotonic()
        final = done >= total
        if self._finished or (not final and now - self._last < REDRAW):
            return 0
        self._last = now
        self._finished = final
        elapsed = now - self.started
        percent = 100 * done // total if total else 100
        rate = f", {format_size(done / elapsed)}/s" if self.counts_bytes and done and elapsed > 0 else ""
        eta = f", {elapsed * (total - done) / done:.0f} s left" if done and not final else ""
        sys.stderr.write(f"\r{self.label}: {percent:3d}%{rate}{eta}   " + ("\n" if final else ""))
        sys.stderr.flush()
        return 0


def terminal_progress(label: str, *, counts_bytes: bool = True) -> TerminalProgress | None:
    """A progress line for ``label`` when stderr is a terminal; None (no progress at all) otherwise."""
    return TerminalProgress(label, counts_bytes=counts_bytes) if sys.stderr.isatty() else None
