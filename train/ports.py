"""A free local TCP port for a one-node rendezvous (torch-free, so `cgpt launch --dry-run`
picks one without loading torch; train.distributed uses it for its own process group), and
the environment variables that place a process in a process group."""

from __future__ import annotations

import socket

# set by launchers (deepspeed, torchrun, srun through cgpt) and by train.distributed's own
# one-process group: a child started with them would try to join that group
PROCESS_GROUP_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
