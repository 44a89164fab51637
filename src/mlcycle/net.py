"""Loopback network helpers shared by the servers mlcycle starts (broker, scoring service, stack).

A leaf at the bottom of the layers (docs/architecture.md): the stream broker and the stack
supervisor both need to know whether a port is taken, and the broker sits below ``ops``; keeping
these few lines here lets each import them without importing the other.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"
"""Every server mlcycle starts binds here unless told otherwise: secure by default."""


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on host:port (a port in TIME_WAIT counts as free, as for the servers)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now, chosen by the kernel (another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]
