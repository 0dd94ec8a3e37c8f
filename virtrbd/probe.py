"""Whether anything listens at a TCP address, asked without fooling ourselves.

On Linux, a connect to a port of 127.0.0.1 that nothing listens on now and
then gets that very port as its own source port and connects to itself (a
TCP simultaneous open): measured here, once in a few thousand attempts on an
even port.  A loop polling for a daemon's port then "finds" it before the
daemon has bound it, and holds the port so that the daemon cannot bind it at
all; a lab's monitor failed to start that way in CI.
"""

from __future__ import annotations

import socket
import struct


def listening(host: str, port: int, timeout: float) -> bool:
    """True when something other than the probe itself accepts a connection at ``host:port``."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    with sock:
        if sock.getsockname() == sock.getpeername():
            # connected to itself: reset rather than close, so the port is not held in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return True
