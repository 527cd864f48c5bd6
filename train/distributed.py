"""Process-group setup and the few collectives the trainer needs.

A plain `cgpt train` (no launcher) becomes a one-process group here, so the trainer always
runs under DeepSpeed with the same code path as `deepspeed --num_gpus N` / `torchrun`
(those launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* themselves).
CPU runs use the gloo backend, CUDA runs nccl.

Hangs are turned into errors here: every collective gets a timeout
(runtime.collective_timeout_s; :func:`is_timeout` recognises the exception and
:func:`timeout_message` words it), and a torch extension build lock left behind by a killed
start is found before DeepSpeed would wait on it forever (:func:`check_extension_locks`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cgpt.model.errors import CgptError
from cgpt.train.exit_codes import RankDied
from cgpt.train.ports import free_port


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _CurrentStderr:
    """A stream that writes to whatever sys.stderr is at the time (it may be swapped)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def import_deepspeed():
    """Import DeepSpeed with its log lines on stderr at WARNING and above: they are
    diagnostics, and stdout stays clean for `--json` output and our own console."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        # DeepSpeed picks its CPU accelerator here anyway, but by guessing, with a warning
        # ("Setting accelerator to CPU ...") on every start that would stand before any
        # one-line error of ours; naming it gives the same accelerator without the line
        os.environ["DS_ACCELERATOR"] = "cpu"
    with contextlib.redirect_stdout(sys.stderr):  # a first import logs while it loads
        import deepspeed
        from deepspeed.utils import logger
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce extension
        # (deepspeed_shm_comm) when its communication backend starts, and that extension
        # keeps its buffers in /dev/shm without removing them when a rank dies: killed
        # ranks (resume and dead-peer tests, preempted jobs) left 22 GiB there on a 24 GiB
        # machine and the OOM killer ended the CI run; its C++ build also took 25 s to
        # 28 min. gloo does the same all-reduce with nothing to build or leak, and CPU runs
        # are for tests and small sweeps, so the op is marked unavailable (DeepSpeed
        # documents edits to this dict as persisting).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logger.setLevel(logging.WARNING)
    for h in logger.handlers:
        if type(h) is logging.StreamHandler and not isinstance(h.stream, _CurrentStderr):
            h.setStream(_CurrentStderr())
    return deepspeed


def resolve_device(requested: str) -> str:
    """'cuda' or 'cpu' for runtime.device ('auto' picks CUDA when present)."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise CgptError(
            "runtime.device is 'cuda' but no CUDA GPU is visible; use runtime.device=auto or cpu"
        )
    return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"


def init_distributed(device: str | torch.device, timeout_s: float = 600.0) -> DistInfo:
    """Join (or create) the process group; returns this process's rank and device.

    ``timeout_s`` (runtime.collective_timeout_s) bounds every collective and the rendezvous:
    a rank that waits longer than that on a dead or stalled peer fails instead of hanging
    (gloo raises a RuntimeError, see :func:`is_timeout`; NCCL's watchdog aborts the process).
    """
    device = device.type if isinstance(device, torch.device) else device
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        # our own one-process group: a fresh port, never one inherited from another job
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        # No NCCL environment defaults are needed for the timeout to abort: since torch 2.2
        # (the project needs >= 2.4) TORCH_NCCL_ASYNC_ERROR_HANDLING defaults to 3, so NCCL's
        # watchdog thread logs "Watchdog caught collective operation timeout ..." and tears the
        # process down once a collective outlives `timeout`. TORCH_NCCL_BLOCKING_WAIT=1 would
        # raise in Python instead, but blocks the CPU on every collective; a user may set it.
    deepspeed = import_deepspeed()  # imported here: slow, and only the trainer needs it

    _default_group_timeout(datetime.timedelta(seconds=timeout_s))
    if not torch.distributed.is_initialized():
        # DeepSpeed's TorchBackend JIT-builds its shm comm op (torch.utils.cpp_extension,
        # guarded by a lock file) before it creates the process group: a lock left by a
        # start killed mid-build would make it wait forever, so look first.
        check_extension_locks(wait=True)
        with contextlib.redirect_stdout(sys.stderr):  # it prints its comm extension's build
            deepspeed.init_distributed(
                dist_backend="nccl" if device == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
            )
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    info = DistInfo(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, dev
    )
    _record_peers(info.world_size)
    return info


def _default_group_timeout(timeout: datetime.timedelta) -> None:
    """Make ``timeout`` the default of every process group created from now on.

    The timeout given to init_process_group covers the world group only. DeepSpeed's ZeRO
    optimizers reduce gradients over groups of their own (``dist.new_group``), which torch
    gives its module default instead: 30 minutes for gloo, 10 for NCCL. Measured: a 2-rank
    ZeRO-1 run with rank 1 stopped sat in DeepSpeed's gradient all-reduce, past a 5 s
    ``collective_timeout_s``. torch has no public setter for that default, so its module
    values (read by ``_get_default_timeout`` at each ``new_group``) are set here.
    """
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timeout


# ---------------------------------------------------------------------------- timeouts
# What a collective that outlived the process-group timeout raises (the gloo and store
# messages were measured with torch 2.13; the NCCL ones are torch's wording, untested here):
#  gloo:  RuntimeError("[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting
#         3000ms for recv operation to complete") (or "... for send operation ..."), and every
#         later collective on that group: RuntimeError("Application timeout caused pair
#         closure");
#  NCCL:  DistBackendError("... WorkNCCL(...) timed out in blocking wait ...") with
#         TORCH_NCCL_BLOCKING_WAIT=1, "Watchdog caught collective operation timeout: ... ran
#         for N milliseconds before timing out" from the watchdog;
#  store: DistStoreError("Timed out after 4 seconds waiting for clients. 1/2 clients
#         joined.") when a rank never reaches the rendezvous, and monitored_barrier's
#         "Rank 1 failed to pass monitoredBarrier in 3000 ms".
_TIMEOUT_RE = re.compile(
    r"Timed out waiting \d+ ?ms for (?:recv|send) operation"
    r"|Application timeout caused pair closure"
    r"|timed out in blocking wait"
    r"|Watchdog caught collective operation timeout"
    r"|milliseconds before timing out"
    r"|failed to pass monitoredBarrier"
    r"|Timed out after \d+ seconds waiting for clients"
)


def _chain_matches(exc: BaseException, pattern: re.Pattern) -> bool:
    """Whether ``exc`` or an exception it was raised from is a RuntimeError matching
    ``pattern`` (gloo's and torch's words for a collective that gave up)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RuntimeError) and pattern.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a collective, or the
    rendezvous, giving up on another rank after the process-group timeout."""
    return _chain_matches(exc, _TIMEOUT_RE)


def timeout_message(timeout_s: float, step: int, checkpoint: str | os.PathLike | None) -> str:
    """The one line a timed-out collective becomes; ``step`` is the last finished step."""
    ckpt = str(checkpoint) if checkpoint else "none yet"
    return (
        f"no answer from another rank within runtime.collective_timeout_s={timeout_s:g}s "
        f"after step {step} (a rank died or stalled); last checkpoint: {ckpt}"
    )


# ---------------------------------------------------------------------------- dead peers
# What gloo raises on the surviving ranks when another rank's process dies mid-collective.
# Measured with torch 2.13 (SIGKILL of rank 1 of a 2-rank CPU `cgpt launch`,
# tests/test_hangs.py): "[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer
# [127.0.0.1]:64183. This is typically caused by a remote worker crashing. ...". A read or
# write that meets the reset socket instead carries the OS's words (gloo's "Read error
# [addr]: Connection reset by peer", or "Broken pipe"); those are matched too, not measured.
# NCCL's watchdog aborts the process itself.
_PEER_GONE_RE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|Socket closed"
)
_PEERS: list[tuple[str, int]] = []  # (host, pid) of every rank, by rank


def _record_peers(world_size: int) -> None:
    """Learn every rank's host and pid (one all-gather at start), so that a rank whose
    peer vanished can say which one died."""
    _PEERS.clear()
    me = (socket.gethostname(), os.getpid())
    if world_size <= 1:
        _PEERS.append(me)
        return
    peers: list = [None] * world_size
    torch.distributed.all_gather_object(peers, me)
    _PEERS.extend(tuple(p) for p in peers)


def is_peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a collective failing because
    another rank's process is gone (its connection closed or reset)."""
    return _chain_matches(exc, _PEER_GONE_RE)


def dead_ranks() -> list[tuple[int, str, int]]:
    """(rank, host, pid) of the ranks on this host whose process has exited (gone, or a
    zombie its launcher has not reaped yet); ranks on other hosts cannot be looked at."""
    import psutil  # DeepSpeed's dependency; its launcher uses it the same way

    host, dead = socket.gethostname(), []
    for rank, (h, pid) in enumerate(_PEERS):
        if h != host or pid == os.getpid():
            continue
        try:
            gone = psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.NoSuchProcess:
            gone = True
        except psutil.Error:
            gone = False
        if gone:
            dead.append((rank, h, pid))
    return dead


def peer_gone_error(
    exc: BaseException, step: int, checkpoint: str | os.PathLike | None, resume: str
):
    """The RankDied (one line, exit FAILURE) a collective with a dead peer becomes: which
    rank died (when it ran on this host), the last finished step, the last checkpoint and
    the command to resume. ``reporter`` says whether this rank prints it: rank 0, or, when
    rank 0 is the one that died, the lowest rank that saw it die."""

    # the kernel closes a killed process's sockets before it becomes a zombie: a moment
    # after the error, the dead rank may still look alive
    deadline = time.monotonic() + 3.0
    dead = dead_ranks()
    while not dead and time.monotonic() < deadline and len(_PEERS) > 1:
        time.sleep(0.05)
        dead = dead_ranks()
    if dead:
        who = ", ".join(f"rank {r} (pid {p} on {h})" for r, h, p in dead)
        who += " died" if len(dead) == 1 else " have died"
    else:
        words = _PEER_GONE_RE.search(str(exc))
        who = f"another rank died ({words.group(0) if words else exc})"
    ckpt = str(checkpoint) if checkpoint else "none yet"
    err = RankDied(f"{who} after step {step}; last checkpoint: {ckpt}; resume with: {resume}")
    me = (socket.gethostname(), os.getpid())
    rank = next((r for r, peer in enumerate(_PEERS) if tuple(peer) == me), 0)
    gone = {r for r, _, _ in dead}
    err.reporter = rank == 0 or (0 in gone and rank == min(set(range(len(_PEERS))) - gone))
    return err


# ---------------------------------------------------------------------------- build locks
def extension_build_root() -> Path:
    """The folder torch.utils.cpp_extension builds JIT extensions in, one sub-folder per op
    (the same rule as torch's ``_get_build_directory``; nothing is created)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env is not None:
        return Path(env)
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        acc = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        acc = "cu" + torch.version.cuda.replace(".", "")
    else:
        acc = "cpu"
    py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{py}_{acc}"


def _stale_lock_error(lock: Path, age: float, max_age_s: float) -> CgptError:
    return CgptError(
        f"stale torch extension build lock {lock} ({age:.0f} s old): a build of "
        f"{lock.parent.name} was interrupted (no build takes over {max_age_s:g} s) and every "
        f"start would wait for it forever; remove it with: rm {shlex.quote(str(lock))}"
    )


def check_extension_locks(
    max_age_s: float = 600.0,
    *,
    wait: bool = False,
    root: str | os.PathLike | None = None,
    print_fn: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Look for ``lock`` files of torch extension builds (``ROOT/<op>/lock``).

    A lock older than ``max_age_s`` was left by a build that was killed (torch's FileBaton
    holds no pid, and torch waits on it forever): raise :class:`CgptError` with the ``rm``
    command. A younger one is another process's build: print one line saying so; with
    ``wait``, also wait here until it is gone (then return) or old (then raise), so a lock
    left a moment ago by a killed start cannot hang this one.
    """
    say = print_fn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    base = Path(root) if root is not None else extension_build_root()
    try:
        locks = sorted(p for p in base.glob("*/lock") if p.is_file())
    except OSError:
        return
    for lock in locks:
        announced = False
        while True:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                break  # that build finished
            if age > max_age_s:
                raise _stale_lock_error(lock, age, max_age_s)
            if not announced:
                say(
                    f"waiting for another process's build of {lock.parent.name} "
                    f"(lock {lock}, {age:.0f} s old)"
                )
                announced = True
            if not wait:
                break
            time.sleep(poll_s)


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
