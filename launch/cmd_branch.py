"""`cgpt branch STABLE_RUN --step N --out DIR [--cooldown-fraction F]`: a cooldown branch of a
warmup-stable-decay run (cgpt.train.sweeps.branch), then `cgpt train DIR --resume`.

    cgpt plan --layers 4 --width 128 --decay wsd --tokens-per-param 80 --write stable.yaml ...
    cgpt train stable.yaml --set runtime.save_every=500
    cgpt branch runs/stable --step 1000 --out runs/branch-1000     # then:
    cgpt train runs/branch-1000 --resume                           # trains only the cooldown
"""

from __future__ import annotations

import argparse
import shlex


def register(sub) -> None:
    p = sub.add_parser(
        "branch",
        help="start a cooldown branch of a warmup-stable-decay run at one of its checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stable", metavar="STABLE_RUN", help="the run folder of a plan.decay: wsd run")
    p.add_argument("--step", type=int, required=True, help="its checkpoint step to branch from")
    p.add_argument("--out", required=True, help="the branch's run folder (must not exist)")
    p.add_argument(
        "--cooldown-fraction",
        type=float,
        default=0.2,
        help="the branch's cooldown as a fraction of its schedule (default 0.2)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    # deferred: imports torch (cgpt branch --help must not)
    from cgpt.train.sweeps.branch import make_branch

    cfg = make_branch(args.stable, args.step, args.out, args.cooldown_fraction)
    p, out = cfg.plan, shlex.quote(cfg.runtime.out_dir)
    print(
        f"branch {cfg.runtime.out_dir}: {p.steps:,} steps ({p.tokens:,} tokens), cooldown from "
        f"step {args.step} to {p.steps}; train it with: cgpt train {out} --resume"
    )
    return 0
