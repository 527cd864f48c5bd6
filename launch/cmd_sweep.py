"""`cgpt sweep SWEEP.yaml` runs a scaling sweep; `cgpt sweep fit SWEEP_DIR` (re)fits one.

One subparser: the first positional is either a sweep file or the word ``fit`` followed by a
sweep folder (docs/SCALING.md describes the sweep file and the folder layout).
"""

from __future__ import annotations

import argparse
import sys

from cgpt.configs import resolve_config
from cgpt.model.errors import CgptError

EPILOG = """\
usage forms:
  cgpt sweep SWEEP.yaml [--dry-run] [--retry-failed] [--no-fit]
      run every point (each one a normal `cgpt train` run in OUT/runs/NAME), skipping
      finished points and resuming interrupted ones; a failed point is recorded in
      OUT/results.jsonl with its reason and the sweep carries on; then fit and plot.
      A stop (Ctrl-C; SIGTERM, SIGHUP or SIGUSR1 to the sweep, passed on to the trainer)
      saves the point's checkpoint and exits 75: the same command continues it.
  cgpt sweep fit SWEEP_DIR [--bootstrap N]
      fit the results of a sweep folder: writes SWEEP_DIR/fit.json (read by
      `cgpt plan --fit SWEEP_DIR/fit.json`), scaling.png and, for IsoFLOP sweeps, isoflop.png.
      The fit reports its own predictive error: the law refitted without the largest point
      predicts it (leave-largest-out), and every point in turn (leave-one-out), each with a
      95% prediction interval (fit.json "prediction", the orange marker on scaling.png).
sweep-file LR modes (`lr:`): fixed (default: one run per size), tuned (one trial per
  multiplier in lr_grid, default [0.5, 1, 2]; every trial in results.jsonl, the fits use the
  best per size), mup (μP: plan.lr transferred from plan.lr_base_width; every width must be
  at least that base width; with lr_grid one trial per multiplier of that base LR, and the
  targets train at the sizes' best base LR). lr_select (with trials): best (the best
  trial's loss) or parabola (the vertex of a parabola in ln LR through the best trial and
  its neighbours: the loss at the estimated optimal LR). plan.warmup_tokens_per_param:
  warmup tokens = k × params.
loss_law: paper (default, L(C) = (C/a)^-b + c) or power (c fixed at 0: for ladders too small
  to see the loss floor), in every fit of the sweep, its held-out checks and its targets.
held-out targets (`targets: [...]`): trained once after the ladder and predicted by it;
  `cgpt sweep fit` predicts them also before they train (at their planned FLOPs).
  `target_seeds: [1234, 1]` trains each target once per seed (target-SHAPE, then
  target-SHAPE-sSEED) and reads it against the seeds' mean, their spread beside the error.
seed replicates (`seeds: [1234, 1, 2]`): every point trained once per seed (NAME-sSEED);
  the fits use each point's mean loss and fit.json "seeds" reports the seed-to-seed spread,
  the noise floor to read prediction errors against.
  plan.decay: linear | cosine | wsd (with plan.cooldown_fraction) for every point.
one run, many budgets (`branches: {at: [0.5, 1, 2, 4], cooldown_fraction: 0.2}`, with
  plan.decay: wsd): per size ONE warmup-stable-decay run to the largest multiple of its
  planned tokens, and each smaller multiple a cooldown branch from its checkpoint that
  costs only its cooldown; the loss law uses the 1x points, Chinchilla's L(N, D) all.
  --dry-run lists each point's training FLOPs and what the sweep spends on it.
shipped sweeps, by name from any folder (`cgpt configs` lists them): sweep-cpu,
  sweep-isoflop-cpu, sweep-cpu-tuned (lr: tuned), sweep-cpu-wsd (branches),
  sweep-cpu-predict (6 sizes x 3 seeds, documented LR/warmup/batch rules)
"""


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a scaling sweep, or fit one (`cgpt sweep fit DIR`)",
        description="Scaling experiments: many small compute-optimal runs and "
        "the scaling laws fitted to them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        metavar="SWEEP.yaml | fit",
        help="a sweep file to run (or a shipped sweep's name: sweep-cpu, ...; "
        "`cgpt configs` lists them), or the word `fit`",
    )
    p.add_argument(
        "sweep_dir",
        nargs="?",
        metavar="SWEEP_DIR",
        help="with `fit`: the sweep folder (the sweep file's out_dir)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be done (tokenizer training and data preparation "
        "when the data is missing, then the planned points: params, tokens, "
        "steps, FLOPs) and stop, writing nothing",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun points recorded as failed (default: keep their failure)",
    )
    p.add_argument("--no-fit", action="store_true", help="do not fit at the end")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=500,
        metavar="N",
        help="bootstrap resamples for the fit's intervals (default 500)",
    )
    p.set_defaults(func=run)


def _print(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    # deferred: the sweep's trainer loads torch; quick verbs must not load it
    from cgpt.train.sweeps.sweep import fit_sweep_dir, run_sweep

    if args.bootstrap < 0:
        raise CgptError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.target == "fit":
        if not args.sweep_dir:
            raise CgptError("`cgpt sweep fit` needs the sweep folder: cgpt sweep fit SWEEP_DIR")
        fit_sweep_dir(args.sweep_dir, n_boot=args.bootstrap, log=_print)
        print(f"wrote {args.sweep_dir}/fit.json and the plots")
        return 0
    if args.sweep_dir:
        raise CgptError(
            f"unexpected argument {args.sweep_dir!r}: run a sweep with "
            "`cgpt sweep SWEEP.yaml`, fit one with `cgpt sweep fit SWEEP_DIR`"
        )
    res = run_sweep(
        resolve_config(args.target),
        retry_failed=args.retry_failed,
        dry_run=args.dry_run,
        fit=not args.no_fit,
        log=_print,
    )
    if args.dry_run:
        return 0
    failed = [r for r in res["results"] if r["status"] != "ok"]
    print(
        f"sweep finished: {len(res['results']) - len(failed)} points ok, {len(failed)} "
        f"failed -> {res['out_dir']}/results.jsonl"
    )
    if res["fit_error"]:
        print(f"cgpt sweep: the fit needs more: {res['fit_error']}", file=sys.stderr)
        return 2
    return 0
