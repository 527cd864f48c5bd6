"""`python -m cgpt.train RUN.yaml|RUN_DIR [--set k=v ...] [--resume [--from step-N]
[--allow-change plan.lr,...]]`: the entry point that `cgpt train`, `deepspeed --module
cgpt.train` and `torchrun -m cgpt.train` all run.

A user error prints one line (rank 0 only, so N ranks do not repeat it) and exits 2; Ctrl-C
before training starts exits 130 with one line (once training runs it saves a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys

from cgpt.model.errors import CgptError


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="run config YAML (from `cgpt plan --write` or by hand), or "
        "a run folder (its own config.yaml), e.g. to --resume it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set runtime.micro_batch=4 or "
        "--set wandb=off (bare keys are runtime keys); repeatable",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in runtime.out_dir",
    )
    p.add_argument(
        "--from",
        dest="from_step",
        metavar="step-N",
        help="with --resume: rewind to this checkpoint (later ones are moved to "
        "checkpoints/abandoned-TIME/), e.g. after a loss spike",
    )
    p.add_argument(
        "--allow-change",
        metavar="KEYS",
        help="with --resume: accept these config changes, comma-separated (e.g. "
        "plan.lr,plan.warmup_steps); recorded in changes.jsonl",
    )
    # the deepspeed launcher appends --local_rank=N; the env var LOCAL_RANK says the same
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run_train(args: argparse.Namespace) -> int:
    from cgpt.train.config import load_run_config
    from cgpt.train.loop.resume import ResumeRequest, parse_allow_change
    from cgpt.train.loop.trainer import train

    req = ResumeRequest(
        resume=args.resume,
        from_step=args.from_step,
        allow_change=parse_allow_change(args.allow_change),
    )
    cfg = load_run_config(args.config, args.overrides)
    summary = train(cfg, resume=req)
    if summary["status"] != "preempted" and int(os.environ.get("RANK", "0")) == 0:
        loss = summary["val_loss"]
        print(
            f"{summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
            f"val_loss {loss:.4f} -> {summary['run_dir']}"
            if loss is not None
            else f"{summary['status']}: {summary['steps']} steps -> {summary['run_dir']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cgpt.train", description=__doc__.split("\n")[0])
    add_train_args(p)
    args = p.parse_args(argv)
    try:
        return run_train(args)
    except CgptError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"cgpt train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                "cgpt train: interrupted before training started; nothing was saved",
                file=sys.stderr,
            )
        return 130


if __name__ == "__main__":
    sys.exit(main())
