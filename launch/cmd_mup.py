"""`cgpt mup coord-check` and `cgpt mup transfer`: the μP diagnostics (CPU, minutes).

coord-check  trains a few steps at several widths under SP and μP, records each layer's
             activation scale, writes coord_check.png/.json, exits 0 on PASS (μP flat in
             width, SP not), 1 on FAIL.
transfer     sweeps LRs at two or three widths under SP and μP, writes lr_transfer.png/.json
             and reports the best LR per width (under μP it should not move).
"""

from __future__ import annotations

import json
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.checks import check_positive
from cgpt.train.config import write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mup",
        help="μP diagnostics: coordinate check, LR transfer",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="mup_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _missing_subcommand(p))

    c = sub.add_parser(
        "coord-check",
        help="activation scale vs width, SP next to μP",
        description="Train a few Adam steps at several widths under standard "
        "parameterization and μP; plot each layer's mean |activation| against "
        "width and say whether μP keeps it flat (coord_check.png).",
    )
    c.add_argument(
        "--widths", default="64,128,256,512", help="comma-separated (default %(default)s)"
    )
    c.add_argument("--steps", type=int, default=5, help="Adam steps (default %(default)s)")
    c.add_argument(
        "--lr",
        type=float,
        default=6e-3,
        help="base LR (default %(default)s, the Cerebras-GPT-μP base LR)",
    )
    c.add_argument("--layers", type=int, default=2)
    c.add_argument(
        "--heads", type=int, default=4, help="fixed head count (d_head grows with width)"
    )
    c.add_argument("--seq-len", type=int, default=64)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--seeds", type=int, default=2, help="initialisations averaged per width")
    _common(c, "runs/mup-coord-check")
    c.set_defaults(func=run_coord_check_cmd)

    t = sub.add_parser(
        "transfer",
        help="loss vs LR per width, SP next to μP",
        description="Sweep learning rates at several widths under SP and μP on "
        "the offline corpus (bytes of the Python stdlib source) and plot loss "
        "against LR (lr_transfer.png): under μP the best LR should not move.",
    )
    t.add_argument(
        "--widths",
        default="64,128,256",
        help="comma-separated multiples of 32 (default %(default)s)",
    )
    t.add_argument("--lrs", default=None, help="comma-separated LRs (default 2^-12 ... 2^-4)")
    t.add_argument("--steps", type=int, default=200, help="steps per run (default %(default)s)")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seq-len", type=int, default=64)
    t.add_argument("--batch", type=int, default=8)
    _common(t, "runs/mup-transfer")
    t.set_defaults(func=run_transfer_cmd)


def _common(p, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help="output folder (default %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these models are too small to gain "
        "from more, and spinning threads slow a shared machine down)",
    )


def _missing_subcommand(parser) -> int:
    parser.print_help()
    return 2


def parse_list(text: str, kind, flag: str) -> list:
    try:
        vals = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CgptError(
            f"{flag}: expected comma-separated {kind.__name__}s, got {text!r}"
        ) from None
    if not vals:
        raise CgptError(f"{flag}: empty list")
    return vals


def _positive_ints(args, *names) -> None:
    for name in names:
        check_positive(getattr(args, name), f"--{name.replace('_', '-')}", integer=True)


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CgptError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def _threads(n: int) -> None:
    import torch

    check_positive(n, "--threads", integer=True)
    torch.set_num_threads(n)


def run_coord_check_cmd(args) -> int:
    # deferred: imports torch (cgpt mup --help must not)
    from cgpt.train.mup import coord_check as cc

    widths = parse_list(args.widths, int, "--widths")
    _positive_ints(args, "steps", "layers", "heads", "seq_len", "batch", "seeds")
    check_positive(args.lr, "--lr")
    _threads(args.threads)
    out = _out_dir(args.out)
    res = cc.run_coord_check(
        widths,
        args.steps,
        args.lr,
        args.layers,
        args.heads,
        args.seq_len,
        args.batch,
        args.seeds,
        log=print,
    )
    cc.plot_coord_check(res, out / "coord_check.png")
    _write_json(out / "coord_check.json", res.to_dict())
    print(
        f"\nslope of log(mean |x|) vs log(width) after {res.steps} steps "
        f"(flat: |slope| < {cc.MAX_ABS_SLOPE}):"
    )
    print(f"  {'layer':<12}{'SP':>8}{'μP':>8}")
    for name in res.slopes["sp"]:
        print(f"  {name:<12}{res.slopes['sp'][name]:>+8.2f}{res.slopes['mup'][name]:>+8.2f}")
    verdict = "PASS" if res.passed else "FAIL"
    print(
        f"coordinate check {verdict}: μP {'flat' if res.flat('mup') else 'NOT flat'} "
        f"(max |slope| {res.max_abs_slope('mup'):.2f}), SP "
        f"{'flat (the check saw no blow-up to catch)' if res.flat('sp') else 'grows'} "
        f"(max |slope| {res.max_abs_slope('sp'):.2f})"
    )
    print(f"wrote {out / 'coord_check.png'} and {out / 'coord_check.json'}")
    return 0 if res.passed else 1


def run_transfer_cmd(args) -> int:
    # deferred: imports torch (cgpt mup --help must not)
    from cgpt.train.mup import transfer as mt

    widths = parse_list(args.widths, int, "--widths")
    lrs = parse_list(args.lrs, float, "--lrs") if args.lrs else list(mt.DEFAULT_LRS)
    _positive_ints(args, "steps", "layers", "seq_len", "batch")
    _threads(args.threads)
    out = _out_dir(args.out)
    res = mt.run_transfer(widths, lrs, args.steps, args.batch, args.seq_len, args.layers, log=print)
    mt.plot_transfer(res, out / "lr_transfer.png")
    _write_json(out / "lr_transfer.json", res.to_dict())
    print(f"\nbest LR per width ({res.steps} steps, {res.wall_s:.0f} s):")
    for param in res.losses:
        best = ", ".join(f"{w}: {lr:.3g}" for w, lr in res.best_lrs(param).items())
        print(
            f"  {'SP' if param == 'sp' else 'μP':<3} {best}   "
            f"(drift {res.drift(param):+.0f} octaves)"
        )
    print(f"wrote {out / 'lr_transfer.png'} and {out / 'lr_transfer.json'}")
    return 0
