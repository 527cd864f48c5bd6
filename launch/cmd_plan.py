"""`cgpt plan`: a size, a shape or a budget -> the full training recipe (table, JSON, run YAML).

The verb's arguments and output; the planner itself is cgpt.train.plan. The help text, with
every example (tests/test_plan.py runs each one), is ``DESCRIPTION``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict

from cgpt.launch.args import data_spec, parse_count
from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB
from cgpt.train.checks import HF_PREFIX, FieldError
from cgpt.train.plan.datacheck import absolute
from cgpt.train.plan.devices import DEVICES
from cgpt.train.plan.rules import RECIPE_NAMES, SEQ_LEN


def flag_of(field: str) -> str:
    """The `cgpt plan` flag of a PlanRequest field (the size is the positional SIZE)."""
    return "SIZE" if field == "size" else "--" + field.replace("_", "-")


DESCRIPTION = """\
`cgpt plan`: a size, a shape or a budget -> the full training recipe (table, JSON, run YAML).

cgpt plan 111M                                  the published recipe
cgpt plan --params 400M                         the family's rules at any size
cgpt plan --layers 20 --width 1280
cgpt plan --flops 1e21                          compute-optimal for a FLOP budget
cgpt plan --flops 1e21 --inference-tokens 1e12  the same loss, cheapest to train + serve 1e12 tokens
cgpt plan --params 400M --decay wsd             warmup-stable-decay (20% linear cooldown)
cgpt plan --params 400M --recipe deepseek       DeepSeek LLM's batch and LR laws
cgpt plan --params 400M --recipe porian         Porian et al. 2024's batch and LR laws
cgpt plan --params 400M --recipe olmo           OLMo-core's ladder: Porian's laws, LR halved
cgpt plan --gpu-hours 2000 --gpu h100 --mfu 0.4
cgpt plan 1.3B --gpus 48 --gpu h100 --zero-stage 1 --json     (48 ranks split its 528)
cgpt plan 111M --gpus 8 --gpu h100 --write run.yaml --data data/pile
cgpt plan 111M --write run.yaml --data web=data/web:0.7,code=data/code:0.3    (a mixture)

Continued pretraining (--init-from: a HF folder, hf:NAME, a cgpt model file, run folder or
checkpoint step): the source's model, the family's batch for its size, the LR re-warmed
over 1% of the steps to the source's peak (or --lr), then decayed to 10%:
  $ cgpt plan --init-from hf:cerebras/Cerebras-GPT-111M --tokens 2B --write cpt.yaml --data D
"""


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="plan a compute-optimal run (size, shape or budget)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _what_args(p)
    _rule_args(p)
    _cluster_args(p)
    _output_args(p)
    p.set_defaults(func=run)


def _what_args(p) -> None:
    what = p.add_argument_group("what to plan (exactly one)")
    what.add_argument("size", nargs="?", help="a published size: 111M 256M 590M 1.3B 2.7B 6.7B 13B")
    what.add_argument("--params", help="parameter count, e.g. 400M")
    what.add_argument("--layers", type=int, help="with --width: an explicit shape")
    what.add_argument("--width", type=int, help="d_model (with --layers)")
    what.add_argument("--heads", type=int, help="attention heads (default: d_head 64 or 128)")
    what.add_argument(
        "--flops",
        help="training budget in FLOPs, a ceiling: the plan costs at most this, in "
        "--flops-convention (default: the paper's algorithmic one)",
    )
    what.add_argument(
        "--flops-convention",
        choices=["paper", "6n"],
        default="paper",
        help="what --flops counts: paper (the Cerebras-GPT paper's algorithmic FLOPs, the "
        "loss law's input) or 6n (6N + 12·L·T·d per token, the MFU/hardware convention)",
    )
    what.add_argument(
        "--gpu-hours",
        help="training budget in GPU-hours (needs --gpu), a ceiling: hardware FLOPs "
        "hours·3600·peak·MFU in the 6n convention",
    )
    what.add_argument(
        "--inference-tokens",
        metavar="T",
        help="with --flops: tokens the model will serve; plan the N and D that reach the "
        "compute-optimal loss at --flops with the least 6ND + 2NT (Sardana et al. 2023; law: "
        "Besiroglu et al. 2024, or --fit's E, A, B, alpha, beta)",
    )
    what.add_argument(
        "--init-from",
        metavar="SRC",
        help="continued pretraining from these weights: a HF GPT-2 folder, hf:NAME, a cgpt "
        "model file, run folder or checkpoint step (with --tokens or --tokens-per-param)",
    )
    what.add_argument("--tokens", help="with --init-from: new tokens to train on, e.g. 2B")


def _rule_args(p) -> None:
    rules = p.add_argument_group("rules")
    rules.add_argument("--tokens-per-param", type=float, help="default 20 (or the --fit value)")
    rules.add_argument("--fit", metavar="FIT.json", help="a sweep's fit: tokens/param, loss law")
    rules.add_argument(
        "--rules",
        action="store_true",
        help="for a published size: the rule-based plan, not the published one",
    )
    rules.add_argument("--seq-len", type=int, default=SEQ_LEN)
    rules.add_argument(
        "--vocab-size",
        type=int,
        help=f"default: the --data folder's tokenizer vocab, else GPT-2's {GPT2_VOCAB}; "
        "may pad it up to a multiple of 64",
    )
    rules.add_argument("--batch-seqs", type=int, help="override the global batch (sequences)")
    rules.add_argument("--lr", type=float, help="override the peak learning rate")
    rules.add_argument(
        "--recipe",
        default="cerebras",
        metavar="NAME",
        help=f"batch and LR laws, one of {', '.join(RECIPE_NAMES)}: cerebras (the family's "
        "fits, default), deepseek (DeepSeek LLM's B_opt(C), η_opt(C)), porian (Porian et al. "
        "2024: B = 160·(N/108M)^(2/3) sequences of 2048, LR = 0.0047·(N/108M)^(-1/3)), olmo "
        "(OLMo-core's model ladder: porian's laws with the LR halved)",
    )
    rules.add_argument(
        "--param-count",
        choices=["total", "non-embedding"],
        default="total",
        help="what N counts in tokens = tokens/param × N and in --params (default total)",
    )
    rules.add_argument(
        "--decay",
        choices=["linear", "cosine", "wsd"],
        help="LR decay shape (default: the family's rule, linear below 1B, cosine above); "
        "wsd = warmup-stable-decay (Hägele et al. 2024)",
    )
    rules.add_argument(
        "--cooldown-fraction",
        type=float,
        metavar="F",
        help="with --decay wsd: the last fraction of the steps that cools down linearly "
        "to the final LR (default 0.2)",
    )
    rules.add_argument("--mup", action="store_true", help="the μP variant of the plan")


def _cluster_args(p) -> None:
    cl = p.add_argument_group("cluster")
    cl.add_argument(
        "--gpu",
        metavar="GPU",
        help=f"device (its peak bf16 FLOP/s and memory), one of: {', '.join(DEVICES)}",
    )
    cl.add_argument("--gpus", type=int, help="total GPUs (data-parallel ranks)")
    cl.add_argument("--nodes", type=int)
    cl.add_argument("--gpus-per-node", type=int)
    cl.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    cl.add_argument(
        "--zero-stage",
        type=int,
        choices=[0, 1, 2, 3],
        help="default: the lowest of 1, 2, 3 that fits",
    )
    cl.add_argument("--micro-batch", type=int, help="default: the largest that fits")
    cl.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: only when needed to fit",
    )


def _output_args(p) -> None:
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--write",
        metavar="RUN.yaml",
        help="write a run config for `cgpt train` (needs --data); every path in it is "
        "written absolute, so it means the same from any directory",
    )
    out.add_argument(
        "--data",
        help="the data folder (made by cgpt prepare), or a mixture NAME=DIR:WEIGHT,... "
        "(e.g. web=data/web:0.7,code=data/code:0.3: data.sources); its meta.json decides "
        "the vocab and the plan is checked against it (needed by --write)",
    )
    out.add_argument("--tokenizer", help="tokenizer folder for --write (default: from the data)")
    out.add_argument("--out-dir", help="runtime.out_dir for --write (default runs/NAME)")


def build_plan(args):
    """Parse the flags into a PlanRequest and plan it (cgpt.train.plan.request); a refusal
    names the flags."""
    # deferred here and below: the planner loads pydantic (the run config's schema, ~0.4 s),
    # which the other verbs' start must not pay for
    from cgpt.train.plan.request import plan

    req = _request(args)
    try:
        return plan(req), req.device
    except FieldError as e:
        raise CgptError(e.spelled(flag_of)) from None


def _request(args):
    """The PlanRequest of the flags: counts such as 400M and --data parsed here."""
    from cgpt.train.plan.request import PlanRequest  # deferred: see build_plan

    counts = {
        name: parse_count(getattr(args, name), flag) if getattr(args, name) else None
        for name, flag in (
            ("params", "--params"),
            ("flops", "--flops"),
            ("gpu_hours", "--gpu-hours"),
            ("tokens", "--tokens"),
        )
    }
    if args.inference_tokens is not None:  # 0 is a valid volume (the compute-optimal plan)
        text = str(args.inference_tokens).strip()
        counts["inference_tokens"] = (
            0.0 if text in ("0", "0.0") else parse_count(text, "--inference-tokens")
        )
    data = data_spec(args.data) if args.data else None
    return PlanRequest(
        size=args.size,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        tokens_per_param=args.tokens_per_param,
        fit=args.fit,
        rules=args.rules,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        flops_convention=args.flops_convention,
        batch_seqs=args.batch_seqs,
        lr=args.lr,
        decay=args.decay,
        cooldown_fraction=args.cooldown_fraction,
        recipe=args.recipe,
        param_count=args.param_count,
        mup=args.mup,
        gpu=args.gpu,
        gpus=args.gpus,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        mfu=args.mfu,
        zero_stage=args.zero_stage,
        micro_batch=args.micro_batch,
        activation_checkpointing=args.activation_checkpointing,
        init_from=args.init_from,
        data=data,
        params=counts["params"],
        flops=counts["flops"],
        gpu_hours=counts["gpu_hours"],
        tokens=counts["tokens"],
        inference_tokens=counts.get("inference_tokens"),
    )


def run(args) -> int:
    if args.write and not args.data:
        raise CgptError("--write needs --data DIR (a folder made by cgpt prepare, or a mixture)")
    plan, device = build_plan(args)
    if args.write:
        write_config(plan, args)
    if args.json:
        d = plan.to_json()
        if device and not plan.cluster:
            from cgpt.train.plan.cluster import time_on  # deferred: see build_plan

            d["gpu"], d["mfu"] = device.name, args.mfu
            d["gpu_hours"] = time_on(plan, 1, device, args.mfu)[1]
        if plan.init_from:
            d["init_from"] = plan.init_from
        inf = plan.inference
        if inf:  # one law per plan: the one that chose N and D
            d["predicted_loss"] = inf.side_by_side["inference_aware"]["predicted_loss"]
            d["loss_law"] = {"form": "chinchilla", **asdict(inf.choice.law)}
            d["predicted_loss_pi95"] = d["loss_law_check"] = None
        if args.write:
            d["written"] = args.write
        print(json.dumps(d, indent=2))
    else:
        from cgpt.launch.plan_table import format_plan  # deferred: see build_plan

        print(format_plan(plan, device, args.mfu))
        if args.write:
            quoted = shlex.quote(args.write)  # a path with spaces works when pasted
            print(f"\nwrote {args.write} (train it with: cgpt train {quoted})")
    return 0


def write_config(plan, args) -> None:
    """The run config of ``plan`` at --write, every path absolute (README, Paths)."""
    out_dir = args.out_dir or plan.to_run_config(plan.data).runtime.out_dir
    tokenizer = absolute(args.tokenizer) if args.tokenizer else None
    cfg = plan.to_run_config(plan.data, tokenizer, {"out_dir": absolute(out_dir)})
    source = plan.init_from
    if source:
        from cgpt.train.config import InitSection  # deferred: see build_plan

        hub = source.startswith(HF_PREFIX)
        cfg.init = InitSection(source=source if hub else absolute(source))
    try:
        cfg.save(args.write)
    except OSError as e:
        raise CgptError(f"cannot write {args.write!r}: {e.strerror or e}") from None
