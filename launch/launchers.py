"""Build the exact command that runs ``python -m cgpt.train RUN.yaml`` on a topology.

cgpt has no cluster runtime of its own: it drives the launchers clusters already run.

* ``deepspeed`` — one node (``--num_gpus``), many nodes over pdsh/ssh or MPI with a
  hostfile, or one manual start per node (``--no_ssh --node_rank R``).
* ``torchrun`` — one start per node (``--nnodes N --node_rank R``); SLURM uses it.

Every check that can fail (hostfile, batch split, launcher binary, master port) runs before
anything starts, and fails as a :class:`CgptError` with one line that names the fix.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cgpt.launch.hostfile import Host, check_host
from cgpt.model.errors import CgptError
from cgpt.train.config import PlanSection
from cgpt.train.plan.batch import feasible_micro_batches, split_batch
from cgpt.train.ports import free_port  # noqa: F401  (torch-free; the CLI uses L.free_port)

LAUNCHERS = ("deepspeed", "torchrun")
# DeepSpeed's multi-node backends and the program each one needs on PATH
DS_BACKENDS = {
    "pdsh": "pdsh",
    "openmpi": "mpirun",
    "mpich": "mpirun",
    "impi": "mpirun",
    "mvapich": "mpirun",
    "slurm": "srun",
}
DEFAULT_MASTER_PORT = 29500  # torch.distributed's default; all nodes must agree on it
TRAIN_MODULE = "cgpt.train"
# DeepSpeed's pdsh backend joins the command into one string that a shell on every node
# re-reads (it only wraps arguments with spaces in double quotes, and pdsh replaces %n):
# words that reach it may only use these characters (and a space, inside an argument)
_PDSH_SAFE = re.compile(r"[A-Za-z0-9_.,:=+/@-]")


def check_count(label: str, value, lo: int, hi: int | None = None) -> int:
    """`value` if it is a whole number in lo..hi; else CgptError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgptError(f"{label} must be a whole number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        want = f"in {lo}..{hi}" if hi is not None else f"at least {lo}"
        raise CgptError(f"{label} must be {want}, got {value}")
    return value


@dataclass(frozen=True)
class Topology:
    """Where the ranks run: ``nodes`` × ``gpus_per_node`` processes (CPU processes on a
    machine without GPUs); ``node_rank`` is this machine's place for per-node launchers."""

    nodes: int
    gpus_per_node: int
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    hostfile: str | None = None
    hosts: tuple[Host, ...] = field(default=())

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def make_topology(
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    hosts: list[Host] | None = None,
    hostfile: str | None = None,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    default_gpus: int = 1,
) -> Topology:
    """Fill the defaults: the hostfile gives the node count and slots; the first host is
    the master; one node with `default_gpus` processes otherwise."""
    hosts = list(hosts or [])
    # explicit values are checked before the defaults fill in: 0 must not mean "default"
    if nodes is not None:
        check_count("--nodes", nodes, 1)
    if gpus_per_node is not None:
        check_count("--gpus-per-node", gpus_per_node, 1)
    if master_addr is not None:
        check_host("--master-addr", master_addr)
    if hosts:
        nodes = nodes or len(hosts)
        if nodes > len(hosts):
            raise CgptError(f"--nodes {nodes} but the hostfile lists only {len(hosts)} host(s)")
        used = hosts[:nodes]
        if gpus_per_node is None:
            slots = {h.slots for h in used}
            if len(slots) > 1:  # per-node launchers and the batch rule need one count
                raise CgptError(
                    "the hostfile's hosts have different slot counts "
                    f"({', '.join(f'{h.name}={h.slots}' for h in used)}); "
                    "pass --gpus-per-node to use the same number on every node"
                )
            gpus_per_node = slots.pop()
        master_addr = master_addr or used[0].name
    nodes = 1 if nodes is None else nodes
    gpus_per_node = default_gpus if gpus_per_node is None else gpus_per_node
    check_count("--gpus-per-node", gpus_per_node, 1)
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < nodes:
        raise CgptError(f"--node-rank {node_rank!r} is outside 0..{nodes - 1} for {nodes} node(s)")
    if nodes > 1 and not master_addr:
        raise CgptError(
            f"{nodes} nodes need the address of node 0: pass --master-addr "
            "(or a --hostfile whose first host is node 0)"
        )
    port = DEFAULT_MASTER_PORT if master_port is None else master_port
    check_count("--master-port", port, 1, 65535)
    if hostfile:  # absolute: multi-node launchers start processes in other folders
        hostfile = str(Path(hostfile).resolve())
    return Topology(
        nodes,
        gpus_per_node,
        node_rank,
        master_addr or "127.0.0.1",
        port,
        hostfile,
        tuple(hosts[:nodes]),
    )


# ---- the batch split -----------------------------------------------------------------


def resolve_micro_batch(
    plan: PlanSection, micro_batch: int, world_size: int
) -> tuple[int, str | None]:
    """The micro-batch to run with on `world_size` ranks, and a note when it changed.

    The global batch of every phase must split evenly over the ranks (else CgptError with
    the nearest feasible batches / rank counts, from cgpt.train.plan.batch). When only the
    micro-batch doesn't fit, re-split: take the largest feasible micro-batch not above the
    configured one (a smaller one never needs more memory), feasible for every phase.
    """
    batches = sorted({ph.global_batch_seqs for ph in plan.phases()})
    for gb in batches:
        if gb % world_size:
            try:
                split_batch(gb, world_size, 1)
            except CgptError as e:
                raise CgptError(f"{world_size} rank(s): {e}") from None
    common = set.intersection(*(set(feasible_micro_batches(gb, world_size)) for gb in batches))
    if micro_batch in common:
        return micro_batch, None
    best = max(b for b in common if b <= micro_batch)  # 1 is always in `common`
    splits = [split_batch(gb, world_size, best) for gb in batches]
    accum = "/".join(str(s.grad_accum) for s in splits)
    return best, (
        f"re-split: micro-batch {micro_batch} does not divide the "
        f"{'/'.join(str(gb // world_size) for gb in batches)} sequences per rank "
        f"(global batch {'/'.join(map(str, batches))} over {world_size} ranks); "
        f"using micro-batch {best} with {accum} gradient-accumulation steps"
    )


# ---- binaries and ports -----------------------------------------------------------------


def find_program(name: str, hint: str = "") -> str:
    """Absolute path of `name`: the bin folder of this Python (a venv) first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and local.stat().st_mode & 0o111:
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise CgptError(
        f"{name} not found (looked in {local.parent} and on PATH)" + (f"; {hint}" if hint else "")
    )


def check_port_free(addr: str, port: int) -> None:
    """Raise CgptError if `port` is taken on this machine, when `addr` is this machine.

    A master address that belongs to another machine is not ours to test (the launcher
    on node 0 binds it). SO_REUSEADDR as torch's TCPStore uses it, so a port that is only
    in TIME_WAIT counts as free, as it does for the store.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((addr, 0))
        except OSError:  # not one of this machine's addresses (or unresolvable here)
            return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise CgptError(
                    f"master port {port} on {addr} is already in use; pick another "
                    "with --master-port (a free one is chosen when you omit it "
                    "on a single node)"
                ) from None
            raise


# ---- commands -----------------------------------------------------------------------------


def train_args(
    config_path: str | Path, overrides: list[str] | None = None, resume: bool = False
) -> list[str]:
    """Arguments after ``-m cgpt.train``; the config path is absolute because multi-node
    launchers start the processes in other working directories."""
    args = [str(Path(config_path).resolve())]
    for item in overrides or []:
        args += ["--set", item]
    if resume:
        args.append("--resume")
    return args


def deepspeed_command(
    topo: Topology,
    args: list[str],
    binary: str = "deepspeed",
    no_ssh: bool = False,
    backend: str = "pdsh",
) -> list[str]:
    """`deepspeed` runner command. One node without a hostfile: local processes. With a
    hostfile: the runner starts every node over `backend` (pdsh/ssh, MPI, ...), or only
    this node with `no_ssh` (run it on every node with its --node_rank)."""
    cmd = [binary]
    if topo.hostfile:
        cmd += ["--hostfile", topo.hostfile]
    cmd += ["--num_nodes", str(topo.nodes), "--num_gpus", str(topo.gpus_per_node)]
    if topo.hostfile or topo.nodes > 1:
        cmd += ["--master_addr", topo.master_addr]
    cmd += ["--master_port", str(topo.master_port)]
    if no_ssh:
        cmd += ["--no_ssh", "--node_rank", str(topo.node_rank)]
    elif topo.hostfile and backend != "pdsh":
        cmd += ["--launcher", backend]
    # ranks read LOCAL_RANK from the environment; no --local_rank argument for the trainer
    cmd += ["--no_local_rank", "--module", TRAIN_MODULE]
    return cmd + args


def torchrun_command(topo: Topology, args: list[str], binary: str = "torchrun") -> list[str]:
    """`torchrun` command for THIS node (run it on every node with its own node rank)."""
    return [
        binary,
        "--nnodes",
        str(topo.nodes),
        "--nproc_per_node",
        str(topo.gpus_per_node),
        "--node_rank",
        str(topo.node_rank),
        "--master_addr",
        topo.master_addr,
        "--master_port",
        str(topo.master_port),
        "-m",
        TRAIN_MODULE,
    ] + args


def build_command(
    launcher: str,
    topo: Topology,
    args: list[str],
    no_ssh: bool = False,
    backend: str = "pdsh",
    resolve_binary: bool = True,
) -> list[str]:
    """The launcher command; with `resolve_binary`, the launcher must exist (CgptError)."""
    if launcher not in LAUNCHERS:
        raise CgptError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if launcher == "deepspeed" and topo.nodes > 1 and not topo.hostfile:
        raise CgptError(
            f"{topo.nodes} nodes with the deepspeed launcher need --hostfile "
            "(or use --launcher torchrun with --node-rank on every node, or --slurm)"
        )
    if launcher == "torchrun" and no_ssh:
        raise CgptError("--no-ssh is a deepspeed launcher option")
    if (
        launcher == "deepspeed"
        and topo.hostfile
        and not no_ssh
        and topo.nodes > 1
        and backend == "pdsh"
    ):
        check_remote_shell_words(topo, args)
    binary = launcher
    if resolve_binary:
        hint = (
            "install DeepSpeed (pip install deepspeed) or use --launcher torchrun"
            if launcher == "deepspeed"
            else "it ships with PyTorch (pip install torch)"
        )
        binary = find_program(launcher, hint)
        if launcher == "deepspeed" and topo.hostfile and not no_ssh and topo.nodes > 1:
            if backend not in DS_BACKENDS:
                raise CgptError(
                    f"unknown DeepSpeed backend {backend!r}; choose one of {', '.join(DS_BACKENDS)}"
                )
            find_program(
                DS_BACKENDS[backend],
                f"DeepSpeed's {backend} backend starts the other "
                "nodes with it; install it, choose another --ds-backend, or start "
                "each node yourself with --no-ssh --node-rank R",
            )
    if launcher == "deepspeed":
        return deepspeed_command(topo, args, binary, no_ssh, backend)
    return torchrun_command(topo, args, binary)


def check_remote_shell_words(topo: Topology, args: list[str]) -> None:
    """CgptError when a word of the deepspeed+pdsh command would be changed (or run) by
    the remote shell: pdsh hands DeepSpeed's command line to a shell on every node."""
    words = [
        ("--master-addr", topo.master_addr, False),
        ("the working directory", os.path.abspath("."), False),
        ("the Python path", sys.executable, False),
    ]
    for i, arg in enumerate(args):
        label = (
            "the config path"
            if i == 0
            else "--set"
            if args[i - 1] == "--set"
            else "a trainer argument"
        )
        words.append((label, arg, True))
    for label, word, space_ok in words:
        bad = next(
            (c for c in word if not (_PDSH_SAFE.fullmatch(c) or (space_ok and c == " "))), None
        )
        if bad is not None:
            raise CgptError(
                f"{label} {word!r} contains {bad!r}, which DeepSpeed's pdsh backend "
                "would leave to the remote shell; start each node with --no-ssh "
                "--node-rank R, use --launcher torchrun, or --slurm"
            )


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
