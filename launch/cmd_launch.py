"""`cgpt launch` (run `cgpt.train` on a topology, or write a SLURM job) and `cgpt demo`."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

from cgpt.launch import launchers as L
from cgpt.launch.hostfile import read_hostfile
from cgpt.model.errors import CgptError


def register(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run training on one node, many nodes or SLURM",
        description="Build the launcher command (deepspeed or torchrun) that runs "
        "`python -m cgpt.train RUN.yaml` on the given topology, check the batch "
        "split, print the command and run it (unless --dry-run).",
    )
    p.add_argument("config", metavar="RUN.yaml")
    p.add_argument("--nodes", type=int, help="number of nodes (default: hostfile hosts, else 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        help="processes per node (default: the GPUs "
        "here, the hostfile's slots, or 1 CPU process on a machine without GPUs)",
    )
    p.add_argument("--hostfile", help="DeepSpeed/MPI hostfile: one 'HOST slots=N' line per node")
    p.add_argument(
        "--node-rank",
        type=int,
        default=0,
        help="this node's rank for per-node starts (torchrun, deepspeed --no-ssh)",
    )
    p.add_argument(
        "--master-addr",
        help="address of node 0 (default: first hostfile host, 127.0.0.1 on one node)",
    )
    p.add_argument(
        "--master-port",
        type=int,
        help=f"rendezvous port (default: a free port on one node, {L.DEFAULT_MASTER_PORT} on many)",
    )
    p.add_argument(
        "--launcher",
        choices=L.LAUNCHERS,
        default=None,
        help="default: deepspeed; torchrun under --slurm (its SIGTERM grace period "
        "is configurable, deepspeed's launcher kills after a fixed 30 s)",
    )
    p.add_argument(
        "--no-ssh",
        action="store_true",
        help="deepspeed: start only this node "
        "(run the same command on every node with its --node-rank)",
    )
    p.add_argument(
        "--ds-backend",
        default="pdsh",
        choices=sorted(L.DS_BACKENDS),
        help="how deepspeed starts the other nodes of a hostfile (default pdsh)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to the trainer (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    s = p.add_argument_group("SLURM")
    s.add_argument(
        "--slurm",
        action="store_true",
        help="write RUN_DIR/slurm.sbatch (one launcher per node, requeue on timeout)",
    )
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--time", default="24:00:00", help="time limit (default 24:00:00)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs per node (default 8 per GPU)")
    s.add_argument(
        "--signal-lead",
        type=int,
        default=300,
        metavar="SECONDS",
        help="checkpoint and requeue this long before the time limit (default 300)",
    )
    s.add_argument("--job-name", default=None, help="SLURM job name (default cgpt-PLAN)")
    s.add_argument("--submit", action="store_true", help="sbatch the script")
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
    d.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    d.add_argument("--config", default=None, help="demo run config (default configs/demo-cpu.yaml)")
    d.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop training after this many steps (smoke runs)",
    )
    d.add_argument(
        "--corpus-docs", type=int, default=None, help="use only the first N documents of the corpus"
    )
    d.add_argument(
        "--fresh",
        action="store_true",
        help="start a new run folder instead of resuming an unfinished demo run",
    )
    d.add_argument("--prompt", default="def ", help="prompt for the generated sample")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from cgpt.launch.demo import run_demo

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


def cmd_launch(args) -> int:
    from cgpt.train.config import load_run_config

    if args.submit and not args.slurm:
        raise CgptError("--submit goes with --slurm")
    if args.slurm and args.dry_run and args.submit:
        raise CgptError("--dry-run and --submit contradict each other")
    cfg = load_run_config(args.config, args.set)
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
    return run_forwarding_signals(cmd)


def _sbatch_text(args, cfg, topo: L.Topology, overrides: list[str]) -> str:
    """The checked sbatch script (CgptError, one line, on any value that cannot go in)."""
    from cgpt.launch.slurm import SlurmOptions, check_name, render_sbatch

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
    from cgpt.launch.slurm import output_in_header, submit, write_sbatch

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


def run_forwarding_signals(cmd: list[str]) -> int:
    """Run the launcher; SIGTERM/SIGINT sent to us go to it, so the trainer checkpoints."""
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
