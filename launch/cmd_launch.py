"""`cgpt launch` (run `cgpt.train` on a topology, or write a SLURM job) and `cgpt demo`."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile

import psutil  # DeepSpeed's dependency; its launcher walks the process tree the same way

from cgpt.configs import resolve_config
from cgpt.launch import launchers as L
from cgpt.launch.demo import run_demo
from cgpt.launch.hostfile import read_hostfile
from cgpt.launch.options import Option, add_options
from cgpt.launch.slurm import (
    SlurmOptions,
    check_name,
    output_in_header,
    render_sbatch,
    submit,
    write_sbatch,
)
from cgpt.model.errors import CgptError
from cgpt.train import exit_codes as X
from cgpt.train.config import load_run_config
from cgpt.train.terminal import leave_a_hung_up_terminal

# `cgpt launch`'s options, in --help order (cgpt.launch.options)
LAUNCH_OPTIONS: tuple[Option, ...] = (
    (
        ("config",),
        dict(
            metavar="RUN.yaml",
            help="run config YAML, or a shipped config's name (`cgpt configs` lists them)",
        ),
    ),
    (("--nodes",), dict(type=int, help="number of nodes (default: hostfile hosts, else 1)")),
    (
        ("--gpus-per-node",),
        dict(
            type=int,
            help="processes per node (default: the GPUs "
            "here, the hostfile's slots, or 1 CPU process on a machine without GPUs)",
        ),
    ),
    (("--hostfile",), dict(help="DeepSpeed/MPI hostfile: one 'HOST slots=N' line per node")),
    (
        ("--node-rank",),
        dict(
            type=int,
            default=0,
            help="this node's rank for per-node starts (torchrun, deepspeed --no-ssh)",
        ),
    ),
    (
        ("--master-addr",),
        dict(help="address of node 0 (default: first hostfile host, 127.0.0.1 on one node)"),
    ),
    (
        ("--master-port",),
        dict(
            type=int,
            help="rendezvous port (default: a free port on one node, "
            f"{L.DEFAULT_MASTER_PORT} on many)",
        ),
    ),
    (
        ("--launcher",),
        dict(
            choices=L.LAUNCHERS,
            default=None,
            help="default: deepspeed; torchrun under --slurm (its SIGTERM grace period "
            "is configurable, deepspeed's launcher kills after a fixed 30 s)",
        ),
    ),
    (
        ("--no-ssh",),
        dict(
            action="store_true",
            help="deepspeed: start only this node "
            "(run the same command on every node with its --node-rank)",
        ),
    ),
    (
        ("--ds-backend",),
        dict(
            default="pdsh",
            choices=sorted(L.DS_BACKENDS),
            help="how deepspeed starts the other nodes of a hostfile (default pdsh)",
        ),
    ),
    (
        ("--set",),
        dict(
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="config override passed to the trainer (repeatable)",
        ),
    ),
    (("--resume",), dict(action="store_true", help="continue from the last checkpoint")),
    (("--dry-run",), dict(action="store_true", help="print the command, start nothing")),
)

SLURM_OPTIONS: tuple[Option, ...] = (
    (
        ("--slurm",),
        dict(
            action="store_true",
            help="write RUN_DIR/slurm.sbatch (one launcher per node, requeue on timeout)",
        ),
    ),
    (("--partition",), {}),
    (("--account",), {}),
    (("--time",), dict(default="24:00:00", help="time limit (default 24:00:00)")),
    (("--cpus-per-task",), dict(type=int, help="CPUs per node (default 8 per GPU)")),
    (
        ("--signal-lead",),
        dict(
            type=int,
            default=300,
            metavar="SECONDS",
            help="checkpoint and requeue this long before the time limit (default 300)",
        ),
    ),
    (("--job-name",), dict(default=None, help="SLURM job name (default cgpt-PLAN)")),
    (("--submit",), dict(action="store_true", help="sbatch the script")),
)

DEMO_OPTIONS: tuple[Option, ...] = (
    (("--out",), dict(default="runs/demo", help="demo folder (default runs/demo)")),
    (
        ("--config",),
        dict(default=None, help="demo run config (default configs/demo-cpu.yaml)"),
    ),
    (
        ("--max-steps",),
        dict(type=int, default=None, help="stop training after this many steps (smoke runs)"),
    ),
    (
        ("--corpus-docs",),
        dict(type=int, default=None, help="use only the first N documents of the corpus"),
    ),
    (
        ("--fresh",),
        dict(
            action="store_true",
            help="start a new run folder instead of resuming an unfinished demo run",
        ),
    ),
    (("--prompt",), dict(default="def ", help="prompt for the generated sample")),
)


def register(sub) -> None:
    """`cgpt launch` and `cgpt demo`."""
    p = sub.add_parser(
        "launch",
        help="run training on one node, many nodes or SLURM",
        description="Build the launcher command (deepspeed or torchrun) that runs "
        "`python -m cgpt.train RUN.yaml` on the given topology, check the batch "
        "split, print the command and run it (unless --dry-run).",
    )
    add_options(p, LAUNCH_OPTIONS)
    add_options(p.add_argument_group("SLURM"), SLURM_OPTIONS)
    p.set_defaults(func=cmd_launch)

    def one_line_error(message: str):  # a bad option is one line, like every other refusal
        p.exit(2, f"cgpt launch: error: {message} (see cgpt launch --help)\n")

    p.error = one_line_error

    d = sub.add_parser(
        "demo",
        help="the whole pipeline on the offline corpus, on CPU",
        description="Corpus -> tokenizer -> token shards -> compute-optimal plan "
        "-> DeepSpeed training -> evaluation -> Hugging Face export -> a sample "
        "generated with transformers. Re-running reuses the tokenizer and data.",
    )
    add_options(d, DEMO_OPTIONS)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    run_demo(
        out=args.out,
        config=args.config,
        max_steps=args.max_steps,
        corpus_docs=args.corpus_docs,
        fresh=args.fresh,
        prompt=args.prompt,
    )
    return 0


def _topology(args, slurm: bool) -> L.Topology:
    if slurm:
        if args.hostfile or args.node_rank or args.master_addr:
            raise CgptError(
                "--slurm takes the nodes from the allocation: drop --hostfile, "
                "--node-rank and --master-addr"
            )
        if args.gpus_per_node is None:
            raise CgptError("--slurm needs --gpus-per-node (GPUs to use on each node)")
        nodes = 1 if args.nodes is None else L.check_count("--nodes", args.nodes, 1)
        gpus = L.check_count("--gpus-per-node", args.gpus_per_node, 1)
        port = L.DEFAULT_MASTER_PORT if args.master_port is None else args.master_port
        L.check_count("--master-port", port, 1, 65535)
        # the master address is the allocation's first node, found by the script at run time
        return L.Topology(nodes, gpus, 0, "$MASTER_ADDR", port)
    hosts = read_hostfile(args.hostfile) if args.hostfile else None
    default_gpus = 1
    if args.gpus_per_node is None and not hosts:  # only then is this machine's count needed
        import torch  # deferred: torch is heavy; quick verbs must not load it

        default_gpus = torch.cuda.device_count() or 1
    topo = L.make_topology(
        args.nodes,
        args.gpus_per_node,
        hosts,
        args.hostfile,
        args.node_rank,
        args.master_addr,
        args.master_port,
        default_gpus=default_gpus,
    )
    if args.master_port is None and topo.nodes == 1:
        topo = L.Topology(
            topo.nodes,
            topo.gpus_per_node,
            0,
            topo.master_addr,
            L.free_port(),
            topo.hostfile,
            topo.hosts,
        )
    return topo


def _model_from_source(data: dict) -> dict:
    """The model section from ``init.source`` (cgpt.train.loop.init_from), for a config with
    an init section only: the launcher of a plain config imports no torch."""
    if not isinstance(data.get("init"), dict):
        return data
    from cgpt.train.source.fill import fill_model_section  # imports torch

    return fill_model_section(data)


def cmd_launch(args) -> int:
    if args.submit and not args.slurm:
        raise CgptError("--submit goes with --slurm")
    if args.slurm and args.dry_run and args.submit:
        raise CgptError("--dry-run and --submit contradict each other")
    args.config = resolve_config(args.config)  # a shipped config by name: its path
    cfg = load_run_config(args.config, args.set, fill=_model_from_source)
    topo = _topology(args, args.slurm)
    micro, note = L.resolve_micro_batch(cfg.plan, cfg.runtime.micro_batch, topo.world_size)
    overrides = list(args.set)
    if note:
        overrides.append(f"runtime.micro_batch={micro}")
    # the whole script or command is checked and built before anything is printed, so a
    # refusal is one line
    warning = None
    if args.slurm:
        script = _sbatch_text(args, cfg, topo, overrides)
    else:
        targs = L.train_args(args.config, overrides, args.resume)
        launcher = args.launcher or "deepspeed"
        try:
            cmd = L.build_command(launcher, topo, targs, args.no_ssh, args.ds_backend)
        except CgptError as e:
            if not args.dry_run or "not found" not in str(e):
                raise
            warning = f"cgpt launch: warning: {e}"  # still show what would run
            cmd = L.build_command(
                launcher, topo, targs, args.no_ssh, args.ds_backend, resolve_binary=False
            )
    if note:
        print(f"cgpt launch: {note}", file=sys.stderr)
    print(
        f"cgpt launch: {topo.nodes} node(s) x {topo.gpus_per_node} process(es) = "
        f"{topo.world_size} rank(s); global batch {cfg.plan.global_batch_seqs} sequences, "
        f"micro-batch {micro}",
        file=sys.stderr,
    )
    if args.slurm:
        return _slurm(args, cfg, script)
    if warning:
        print(warning, file=sys.stderr)
    print(L.format_command(cmd), flush=True)
    if args.dry_run:
        return 0
    if topo.node_rank == 0:
        L.check_port_free(topo.master_addr, topo.master_port)
    remote = launcher == "deepspeed" and topo.nodes > 1 and not args.no_ssh
    return run_forwarding_signals(cmd, remote_ranks=remote)


def _sbatch_text(args, cfg, topo: L.Topology, overrides: list[str]) -> str:
    """The checked sbatch script (CgptError, one line, on any value that cannot go in)."""
    job_name = args.job_name
    if job_name is None:  # the plan's name becomes the job name: same rules, its own message
        check_name(
            "plan.name",
            cfg.plan.name,
            hint="; rename the plan or pass --job-name (the job name defaults to cgpt-PLAN)",
        )
        job_name = f"cgpt-{cfg.plan.name}"
    opts = SlurmOptions(
        time=args.time,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        signal_lead_s=args.signal_lead,
        job_name=job_name,
    )
    # --resume always: a requeued job continues; a first start finds no checkpoint
    return render_sbatch(
        topo,
        L.train_args(args.config, overrides, resume=True),
        cfg.runtime.out_dir,
        opts,
        launcher=args.launcher or "torchrun",
    )


def _slurm(args, cfg, text: str) -> int:
    if args.dry_run:
        print(text)
        return 0
    if not output_in_header(cfg.runtime.out_dir):
        print(
            "cgpt launch: note: the run folder's path has characters an #SBATCH line cannot "
            "carry; the script itself sends the job's output to RUN_DIR/slurm-JOBID.out "
            "(SLURM's own messages stay in slurm-JOBID.out where you submit)",
            file=sys.stderr,
        )
    path = write_sbatch(text, cfg.runtime.out_dir)
    print(f"cgpt launch: wrote {path}")
    if args.submit:
        print(submit(path))
    else:
        print(f"submit it with: sbatch {shlex.quote(str(path))}")
    return 0


def run_forwarding_signals(cmd: list[str], remote_ranks: bool = False) -> int:
    """Run the launcher; returns the run's exit code (cgpt.train.exit_codes).

    The launcher gets its own session, so a Ctrl-C at the terminal reaches only us: the
    deepspeed launcher answers SIGINT/SIGTERM by killing its workers (launch.py's
    sigkill_handler) and torchrun by SIGTERM then SIGKILL, each with a traceback. A first
    SIGINT/SIGTERM/SIGHUP/SIGUSR1 becomes SIGUSR1 to every process under the launcher: the
    launchers inherit it ignored (set here before they start) and the ranks' handler saves a
    checkpoint and exits PREEMPTED. A second one kills them all without saving. SIGHUP is a
    closed terminal: the console moves to /dev/null first (cgpt.train.terminal), here and in
    the ranks. With ``remote_ranks`` (deepspeed over pdsh/MPI) the signal also goes to the
    launcher, which stops the other nodes its own way. Rank 0's code comes back through
    $CGPT_EXIT_FILE (torchrun turns any worker's code into 1)."""
    fd, exit_file = tempfile.mkstemp(prefix="cgpt-exit-")
    os.close(fd)
    os.unlink(exit_file)  # rank 0 creates it; its absence means rank 0 said nothing
    env = dict(os.environ, **{X.EXIT_FILE_ENV: exit_file})
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by the launcher
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
    stops = []

    def stop(signum, _frame):
        stops.append(signum)
        leave_a_hung_up_terminal()  # SIGHUP: a closed terminal, where a print would fail
        if len(stops) == 1:
            print(
                f"cgpt launch: {signal.Signals(signum).name}: every rank saves a checkpoint "
                "at the next step and stops (send it again to stop without saving)",
                file=sys.stderr,
                flush=True,
            )
            signal_tree(proc.pid, signal.SIGUSR1, with_root=False)
            if remote_ranks and proc.poll() is None:
                proc.send_signal(signum)
        else:
            print("cgpt launch: stopping without saving", file=sys.stderr, flush=True)
            signal_tree(proc.pid, signal.SIGKILL, with_root=True)

    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    old = {s: signal.signal(s, stop) for s in caught}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    code = X.read_exit_file(exit_file)
    with contextlib.suppress(OSError):
        os.unlink(exit_file)
    return launch_exit_code(rc, code)


def launch_exit_code(launcher_rc: int, rank0_code: int | None) -> int:
    """The exit code of `cgpt launch`: rank 0's (it knows what happened), unless another
    rank failed after rank 0 completed; without it (rank 0 died), the launcher's own code
    when it is one of ours (deepspeed passes a worker's code on), else FAILURE (a rank
    killed by a signal shows up as 247 or 254 from deepspeed, 1 from torchrun)."""
    if rank0_code is not None:
        return X.FAILURE if rank0_code == X.OK and launcher_rc != 0 else rank0_code
    if launcher_rc == 0 or launcher_rc in X.MEANING:
        return launcher_rc
    print(
        f"cgpt launch: the launcher exited with {launcher_rc} and rank 0 reported nothing "
        f"(it was killed or crashed); exit {X.FAILURE}",
        file=sys.stderr,
    )
    return X.FAILURE


def signal_tree(pid: int, sig: int, with_root: bool) -> None:
    """Send ``sig`` to every descendant of ``pid`` (and to ``pid`` itself with
    ``with_root``), as slurmstepd signals every process of a job step: torchrun starts each
    worker in a session of its own, so a process group would miss them."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + ([root] if with_root else [])
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
