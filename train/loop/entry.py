"""`python -m cgpt.train RUN.yaml|RUN_DIR [--set k=v ...] [--resume [--from step-N]
[--allow-change plan.lr,...]]`: the entry point that `cgpt train`, `deepspeed --module
cgpt.train` and `torchrun -m cgpt.train` all run.

Exit codes: cgpt.train.exit_codes (0 completed, 2 user error, 3 diverged, 4 collective
timeout, 75 preempted after a checkpoint, 130 interrupted before training, 1 anything else).
A user error prints one line (rank 0 only, so N ranks do not repeat it); Ctrl-C or SIGUSR1
before training starts exits 130 with one line (once training runs either saves a
checkpoint). Rank 0 also writes its code into ``$CGPT_EXIT_FILE`` (torchrun does not pass
it on).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from cgpt.model.errors import CgptError
from cgpt.train import exit_codes as X
from cgpt.train.config import load_run_config


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="run config YAML (from `cgpt plan --write` or by hand), "
        "a run folder (its own config.yaml), e.g. to --resume it, or (cgpt train) "
        "a shipped config's name: `cgpt configs` lists them",
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
        "plan.lr,plan.warmup_steps; 'data': data whose checksums changed); recorded in "
        "changes.jsonl",
    )
    # the deepspeed launcher appends --local_rank=N; the env var LOCAL_RANK says the same
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_train(args: argparse.Namespace) -> int:
    """Train; returns the exit code (cgpt.train.exit_codes) and, on rank 0, writes it into
    ``$CGPT_EXIT_FILE`` for the wrapper that launched the ranks."""
    # until the trainer's own handler takes over, SIGUSR1 (a stop request that launchers
    # let through) acts like Ctrl-C: nothing to save yet
    signal.signal(signal.SIGUSR1, signal.default_int_handler)
    sigterm = signal.getsignal(signal.SIGTERM)  # the trainer may leave its own in place
    try:
        code = _train(args)
    except CgptError as e:
        if _is_rank0() or getattr(e, "reporter", False):  # one line, not one per rank
            print(f"cgpt train: error: {e}", file=sys.stderr)
        code = X.code_of(e)
    except KeyboardInterrupt:
        if _is_rank0():
            print(
                "cgpt train: interrupted before training started; nothing was saved",
                file=sys.stderr,
            )
        code = X.INTERRUPTED
    except BaseException:
        if _is_rank0():
            X.write_exit_file(X.FAILURE)
        raise
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a late request changes nothing now
    if _is_rank0():
        X.write_exit_file(code)
    if sigterm is not None:  # None: set outside Python, nothing to restore
        signal.signal(signal.SIGTERM, sigterm)  # the report is out
    return code


def _train(args: argparse.Namespace) -> int:
    # the trainer, the source resolver and resume import torch: `cgpt train --help` does not
    from cgpt.train.checkpoints.resume import ResumeRequest, parse_allow_change
    from cgpt.train.loop.trainer import train
    from cgpt.train.source.fill import fill_model_section

    req = ResumeRequest(
        resume=args.resume,
        from_step=args.from_step,
        allow_change=parse_allow_change(args.allow_change),
    )
    cfg = load_run_config(args.config, args.overrides, fill=fill_model_section)  # reads init.source
    summary = train(cfg, resume=req)
    if summary["status"] == "preempted":
        # every rank waits here until rank 0 has written summary.json: a launcher stops the
        # remaining ranks as soon as one exits non-zero
        if _is_rank0():
            X.write_exit_file(X.PREEMPTED)
        _barrier()
        return X.PREEMPTED
    if _is_rank0():
        loss = summary["val_loss"]
        print(
            f"{summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
            f"val_loss {loss:.4f} -> {summary['run_dir']}"
            if loss is not None
            else f"{summary['status']}: {summary['steps']} steps -> {summary['run_dir']}"
        )
    return X.OK


def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cgpt.train", description=__doc__.split("\n")[0])
    add_train_args(p)
    args = p.parse_args(argv)
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())
