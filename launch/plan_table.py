"""The table `cgpt plan` prints: one (label, value) row per fact of a Plan, in sections
(model, tokens and schedule, law, cluster, budget, inference-aware comparison, notes)."""

from __future__ import annotations

import math

from cgpt.train.plan.cluster import time_on
from cgpt.train.plan.inference import ChinchillaLaw
from cgpt.train.plan.memory import fmt_bytes
from cgpt.train.plan.result import Budget, InferenceChoice, LocalFit
from cgpt.train.plan.schedule import cooldown_steps

Rows = list[tuple[str, str]]


def format_plan(plan, device=None, mfu: float = 0.4) -> str:
    rows = _model_rows(plan) + _schedule_rows(plan) + _law_rows(plan)
    rows += _cluster_rows(plan, device, mfu) + _budget_rows(plan.budget)
    rows += _inference_rows(plan.inference)
    rows += [("note", n) for n in plan.notes]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _model_rows(plan) -> Rows:
    m = plan.model
    per = (
        f", {plan.tokens / plan.counted_params:.2f} per non-embedding param)"
        if plan.param_count == "non-embedding"
        else ")"
    )
    return [
        ("plan", f"{plan.name} ({plan.source})"),
        ("params", f"{plan.params:,}"),
        (
            "shape",
            f"{m.n_layer} layers × d_model {m.n_embd}, {m.n_head} heads of {m.head_dim}, "
            f"d_ffn {m.n_inner}, vocab {m.vocab_size:,}",
        ),
        ("init out-proj std", f"{m.out_init_std:.6f}"),
        ("seq_len", f"{plan.seq_len:,}"),
        ("tokens", f"{plan.tokens:,} ({plan.tokens / plan.params:.2f} tokens/param{per}"),
        ("batch/LR recipe", plan.recipe or "the published run"),
        ("steps", f"{plan.steps:,}"),
    ]


def _schedule_rows(plan) -> Rows:
    rows = []
    many = bool(plan.batch_schedule)
    for i, ph in enumerate(plan.phases()):
        tag, num = (f"phase {i + 1}: ", f" {i + 1}") if many else ("", "")
        start = f" (schedule counter from {ph.schedule_start_step:,})" if many else ""
        rows.append(
            (
                f"global batch{num}",
                f"{tag}{ph.global_batch_seqs:,} seqs = {ph.global_batch_seqs * plan.seq_len:,}"
                f" tokens × {ph.steps:,} steps{start}",
            )
        )
        if ph.decay == "wsd":
            cool = cooldown_steps(ph)
            sched = (
                f"warmup {ph.warmup_steps:,} steps, stable {ph.decay_steps - cool:,} steps, "
                f"linear cooldown over the last {cool:,} steps "
                f"({ph.cooldown_fraction:.0%} of the schedule; warmup-stable-decay)"
            )
        else:
            sched = (
                f"warmup {ph.warmup_steps:,} steps, {ph.decay} decay over {ph.decay_steps:,} steps"
            )
        rows.append((f"LR schedule{num}", sched))
    return rows + [
        ("peak / final LR", f"{plan.lr:.3g} / {plan.min_lr:.3g}"),
        (
            "AdamW",
            f"betas {tuple(plan.adam_betas)}, eps {plan.adam_eps:g}, "
            f"weight decay {plan.weight_decay:g}, grad clip {plan.grad_clip:g}",
        ),
        (
            "train FLOPs",
            f"{plan.train_flops:.3e} algorithmic (paper), "
            f"{plan.train_flops_mfu:.3e} 6N+12LTd (MFU)",
        ),
    ]


def _law_rows(plan) -> Rows:
    """The predicted loss, by the one law of the plan: an inference-aware plan's L(N, D)
    (its own choice was made with it), else the paper-form law L(C)."""
    inf = plan.inference
    if inf:
        mine, law = inf.side_by_side["inference_aware"], inf.choice.law
        return [("predicted loss", f"{mine['predicted_loss']:.3f} ({_chinchilla(law)})")]
    pi = plan.law.interval(plan.train_flops)
    rows = [
        (
            "predicted loss",
            f"{plan.predicted_loss:.3f}"
            + (f" (95% interval {pi[0]:.3f}-{pi[1]:.3f})" if pi else "")
            + f" (L = (C/{plan.law.a:.4g})^-{plan.law.b:g} + {plan.law.c:g}, {plan.law.source})",
        )
    ]
    if plan.law.check:
        rows.append(("fit check", plan.law.check))
    from cgpt.train.fits.downstream import plan_rows  # deferred: scipy, only when printing

    rows += plan_rows(plan.predicted_loss, pi, plan.model.vocab_size, plan.law.source)
    return rows


def _chinchilla(law: ChinchillaLaw) -> str:
    return f"L = {law.E:g} + {law.A:g}/N^{law.alpha:g} + {law.B:g}/D^{law.beta:g}, {law.source}"


def _cluster_rows(plan, device, mfu: float) -> Rows:
    c = plan.cluster
    if not c:
        rows = _local_rows(plan.local)
        if device:
            hours = time_on(plan, 1, device, mfu)[1]
            rows.append(("time", f"{hours:,.0f} {device.name} GPU-hours at MFU {mfu:g}"))
        return rows
    mem = c.memory
    return [
        ("cluster", f"{c.gpus} × {c.device.name}, ZeRO stage {c.zero_stage}, MFU {c.mfu:g}"),
        (
            "batch split",
            f"micro-batch {c.micro_batch} × grad accum "
            f"{' / '.join(map(str, c.grad_accum))} × {c.gpus} ranks",
        ),
        ("activation ckpt", "on" if c.activation_checkpointing else "off"),
        (
            "memory per GPU",
            f"{fmt_bytes(mem.total)} of {fmt_bytes(c.device.memory_bytes)}: "
            f"weights {fmt_bytes(mem.weights)}, grads {fmt_bytes(mem.grads)}, "
            f"optimizer {fmt_bytes(mem.optimizer)}, activations "
            f"{fmt_bytes(mem.activations)}, logits {fmt_bytes(mem.logits)}, "
            f"overhead {fmt_bytes(mem.overhead)}",
        ),
        ("time", f"{c.hours:,.1f} h wall clock, {c.gpu_hours:,.0f} GPU-hours"),
    ]


def _local_rows(local: LocalFit | None) -> Rows:
    """The micro-batch a plan without a cluster writes, and why."""
    if local is None or local.micro_batch is None:
        return []
    why = (
        "the largest that divides the global batch and fits"
        if local.chosen
        else "--micro-batch; it fits"
    )
    return [
        (
            "micro-batch",
            f"{local.micro_batch} × grad accum {' / '.join(map(str, local.grad_accum))} "
            f"on one rank ({why} {local.where}: {fmt_bytes(local.memory_bytes)} of "
            f"{fmt_bytes(local.available_bytes)}; --micro-batch to choose)",
        )
    ]


def _budget_rows(b: Budget | None) -> Rows:
    """The budget (a ceiling), its convention, the share used and the rule plans on both
    sides of it (tokens/param exactly the rule's)."""
    if not b:
        return []
    share = f"{math.floor(b.share * 1e4) / 100:.2f}%"  # rounded down: never "100%" above
    if b.gpu_hours is not None:
        used_h = b.gpu_hours * b.share
        head = (
            f"{b.gpu_hours:,.6g} {b.gpu} GPU-hours at MFU {b.mfu:g} = "
            f"{b.flops:.4g} FLOPs, {b.convention}; this plan uses {used_h:,.2f} "
            f"GPU-hours ({share})"
        )
    else:
        head = f"{b.flops:.4g} FLOPs, {b.convention}; this plan uses {b.used_flops:.6g} ({share})"
    rows = [("budget", head)]
    sides = [f"{n.name} {n.flops:.4g} FLOPs ({n.flops / b.flops:.1%})" for n in b.neighbours]
    if sides and b.share < 1:
        rows.append(
            (
                "  no exact fit",
                "whole steps and the family's shapes; the rule plans on both sides: "
                + " | ".join(sides),
            )
        )
    return rows


def _inference_rows(inf: InferenceChoice | None) -> Rows:
    """The inference-aware plan next to the compute-optimal one, every number by one law
    (cgpt.train.plan.inference) and in one FLOP convention (6·N·D + 2·N·T)."""
    if not inf:
        return []
    sbs = inf.side_by_side
    a, o = sbs["inference_aware"], sbs["compute_optimal"]
    cols = [
        ("N (params)", "params", "{:,.0f}"),
        ("D (tokens)", "tokens", "{:,.0f}"),
        ("training FLOPs", "train_flops", "{:.3e}"),
        ("inference FLOPs", "inference_flops", "{:.3e}"),
        ("total FLOPs", "total_flops", "{:.3e}"),
        ("predicted loss", "predicted_loss", "{:.4f}"),
    ]
    be = sbs["break_even_inference_tokens"]
    rows = [
        (
            "inference-aware",
            f"{inf.choice.inference_tokens:.3g} inference tokens (Sardana et al. 2023); "
            "inference-aware | compute-optimal, 6·N·D + 2·N·T",
        )
    ]
    rows += [(f"  {label}", f"{f.format(a[k])} | {f.format(o[k])}") for label, k, f in cols]
    rows.append(
        (
            "  break-even",
            "none needed: the inference-aware plan costs no more to train"
            if be == 0
            else f"{be:.3g} inference tokens (beyond them the inference-aware plan costs less)"
            if be is not None
            else "none: the compute-optimal plan is the cheaper one at any inference volume",
        )
    )
    return rows
