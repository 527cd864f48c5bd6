"""Process-group setup and the few collectives the trainer needs.

A plain `cgpt train` (no launcher) becomes a one-process group here, so the trainer always
runs under DeepSpeed with the same code path as `deepspeed --num_gpus N` / `torchrun`
(those launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* themselves).
CPU runs use the gloo backend, CUDA runs nccl.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass

import torch

from cgpt.model.errors import CgptError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CurrentStderr:
    """A stream that writes to whatever sys.stderr is at the time (it may be swapped)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def import_deepspeed():
    """Import DeepSpeed with its log lines on stderr at WARNING and above: they are
    diagnostics, and stdout stays clean for `--json` output and our own console."""
    with contextlib.redirect_stdout(sys.stderr):  # a first import logs while it loads
        import deepspeed
        from deepspeed.utils import logger
    logger.setLevel(logging.WARNING)
    for h in logger.handlers:
        if type(h) is logging.StreamHandler and not isinstance(h.stream, _CurrentStderr):
            h.setStream(_CurrentStderr())
    return deepspeed


def resolve_device(requested: str) -> str:
    """'cuda' or 'cpu' for runtime.device ('auto' picks CUDA when present)."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise CgptError("runtime.device is 'cuda' but no CUDA GPU is visible; "
                        "use runtime.device=auto or cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"


def init_distributed(device: str) -> DistInfo:
    """Join (or create) the process group; returns this process's rank and device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        # our own one-process group: a fresh port, never one inherited from another job
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    deepspeed = import_deepspeed()  # imported here: slow, and only the trainer needs it

    if not torch.distributed.is_initialized():
        with contextlib.redirect_stdout(sys.stderr):  # it prints its comm extension's build
            deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                    local_rank, dev)


def _reduce(values: list[float], op, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=op)
    return t.tolist()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    return _reduce(values, torch.distributed.ReduceOp.SUM, device)


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
