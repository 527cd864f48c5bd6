"""A free local TCP port for a one-node rendezvous (torch-free, so `cgpt launch --dry-run`
picks one without loading torch; train.distributed uses it for its own process group)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
