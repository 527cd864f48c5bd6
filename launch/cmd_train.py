"""`cgpt train RUN.yaml|NAME [--set k=v] [--resume]` and `cgpt bench`.

`cgpt train` runs the trainer in this process (a one-process DeepSpeed group: one GPU or the
CPU). For several GPUs use `deepspeed --num_gpus N --module cgpt.train RUN.yaml` or
`cgpt launch`; both run the same cgpt.train entry point.
"""

from __future__ import annotations

from cgpt.configs import resolve_config
from cgpt.train.loop.entry import add_train_args, run_train


def _named(args):
    """``args`` with ``config`` resolved: a file or run folder as given, else a shipped
    config's name (`cgpt train cerebras-gpt-111m` from any folder)."""
    args.config = resolve_config(args.config)
    return args


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a run config (DeepSpeed)",
        description="Train a model from a run config with DeepSpeed. On SIGTERM, "
        "SIGUSR1, SIGHUP (a closed terminal) or Ctrl-C it saves a checkpoint and exits 75; "
        "continue with --resume.",
    )
    add_train_args(p)
    p.set_defaults(func=lambda args: run_train(_named(args)))
