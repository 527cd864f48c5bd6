"""`cgpt bench [SIZE | RUN.yaml] [--steps N] [--hf] [--json]`: time training steps.

Synthetic tokens, full optimizer steps through the trainer's DeepSpeed engine; `--hf` adds
transformers.GPT2LMHeadModel of the same shape with the same optimizer (HF Trainer's loop:
autocast in bf16), interleaved in this process, and prints the ratio.
"""

from __future__ import annotations

import json

from cgpt.configs import resolve_config
from cgpt.model.errors import CgptError
from cgpt.model.sizes import canonical_name


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark training steps (tokens/s, MFU, vs transformers)",
        description=__doc__.split("\n")[0],
    )
    p.add_argument(
        "target",
        nargs="?",
        default="111M",
        help="published size (111M ... 13B), a run config YAML or a shipped config's "
        "name (`cgpt configs`) (default 111M)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default: the plan's, or 2048 for a size)",
    )
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="sequences per step (default: the run config's, or 1)",
    )
    p.add_argument(
        "--n-layer",
        type=int,
        default=None,
        help="override the number of layers (quick runs of a wide model)",
    )
    p.add_argument(
        "--hf",
        "--compare-hf",
        dest="compare_hf",
        action="store_true",
        help="also run transformers.GPT2LMHeadModel side by side and print the ratio",
    )
    p.add_argument(
        "--hf-deepspeed",
        action="store_true",
        help="with --hf: run transformers in the same DeepSpeed engine as ours "
        "instead of HF Trainer's loop (compares the two models alone)",
    )
    p.add_argument(
        "--plain-loss",
        dest="fused_loss",
        action="store_false",
        help="our model with the usual logits + F.cross_entropy loss instead of the "
        "fused one (cgpt.model.fused_ce), to measure what the fusion gives",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: the run config's (bf16 for a size, as cgpt train). transformers "
        "runs bf16 under torch.autocast, as HF's Trainer does",
    )
    p.add_argument(
        "--zero-stage",
        type=int,
        default=None,
        help="ZeRO stage of our DeepSpeed engine (default: the run config's, or 1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args) -> int:
    # deferred: torch is heavy; quick verbs must not load it
    from cgpt.train.bench.train_step import bench, format_report

    target = args.target
    try:
        canonical_name(target)
    except CgptError:  # not a size: a run config file, or a shipped config's name
        target = resolve_config(target)
    r = bench(
        target,
        steps=args.steps,
        warmup=args.warmup,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        compare_hf=args.compare_hf,
        compile_=args.compile,
        device=args.device,
        precision=args.precision,
        n_layer=args.n_layer,
        zero_stage=args.zero_stage,
        hf_deepspeed=args.hf_deepspeed,
        fused_loss=args.fused_loss,
    )
    print(json.dumps(r) if args.json else format_report(r))
    return 0
