"""A compute budget -> a plan: FLOPs (``plan_for_flops``) or GPU-hours on a device
(``plan_for_gpu_hours``). Both solve for the N whose family shape, trained on
tokens_per_param × N tokens, costs the budget (``params_for_budget``), then plan N by the
rules (cgpt.train.plan.family.plan_for_params). A budget is a ceiling: the plan is the
largest rule plan that costs at most the budget, with the neighbour just above recorded.
"""

from __future__ import annotations

import math
from dataclasses import replace

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, flops_per_token_algorithmic, flops_per_token_mfu
from cgpt.train.checks import FieldError, check_positive
from cgpt.train.plan import rules as R
from cgpt.train.plan.cluster import check_mfu
from cgpt.train.plan.devices import Device
from cgpt.train.plan.family import plan_for_params
from cgpt.train.plan.result import Budget, Neighbour, Plan
from cgpt.train.plan.shape import bisect, continuous_params, curve_shape, param_counter

# FLOPs per token in each convention (docs/REFERENCE.md, FLOP conventions)
PER_TOKEN = {"algorithmic": flops_per_token_algorithmic, "mfu": flops_per_token_mfu}
# --flops-convention NAME -> the convention; the names a plan prints for each
CONVENTIONS = {"paper": "algorithmic", "6n": "mfu"}
CONVENTION_NAMES = {"algorithmic": "paper (algorithmic)", "mfu": "6N+12LTd (MFU)"}


def params_for_budget(
    flops: float,
    tokens_per_param: float,
    convention: str = "algorithmic",
    vocab_size: int = GPT2_VOCAB,
    seq_len: int = R.SEQ_LEN,
    param_count: str = "total",
) -> float:
    """N such that the family's shape at N, trained on tpp·N tokens, costs `flops` (N and
    the returned count: total or non-embedding parameters)."""
    per_token = PER_TOKEN[convention]
    count = param_counter(param_count)

    def cost(d: float) -> float:
        shape = curve_shape(d, vocab_size, seq_len)
        return per_token(shape, seq_len) * tokens_per_param * count(shape)

    if flops < cost(64):
        raise FieldError(
            "a budget of {flops:.3g} FLOPs is below the smallest model in this "
            "family ({least:.3g} FLOPs at width 64); plan a shape with {f.layers}/"
            "{f.width} instead",
            flops=flops,
            least=cost(64),
        )
    d = bisect(cost, flops, 64, 1e6)
    return continuous_params(d, vocab_size, seq_len, count)


def plan_for_flops(
    flops: float,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    fit: R.Fit | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    convention: str = "algorithmic",
    **kw,
) -> Plan:
    """Compute-optimal plan for a training budget, at most ``flops`` in ``convention``
    ("algorithmic", the paper's and its loss law's, or "mfu", 6N + 12·L·T·d per token):
    N and D = tpp·N grow together."""
    check_positive(flops, "FLOP budget")
    if convention not in PER_TOKEN:
        raise CgptError(f"the FLOP convention must be one of {', '.join(CONVENTIONS)}")
    return _plan_for_budget(flops, convention, tokens_per_param, law, fit, seq_len, vocab_size, kw)


def plan_for_gpu_hours(
    gpu_hours: float,
    device: Device,
    mfu: float = 0.4,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    fit: R.Fit | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    **kw,
) -> Plan:
    """Compute-optimal plan for GPU-hours on `device` at `mfu`: hardware FLOPs
    C = hours·3600·peak·mfu in the MFU convention (6N + 12·L·T·d per token); the GPU count
    does not matter for the total."""
    check_positive(gpu_hours, "GPU-hours")
    check_mfu(mfu)
    flops = gpu_hours * 3600 * device.bf16_flops * mfu
    plan = _plan_for_budget(flops, "mfu", tokens_per_param, law, fit, seq_len, vocab_size, kw)
    assert plan.budget is not None  # _plan_for_budget records it
    return plan.replace(budget=replace(plan.budget, gpu_hours=gpu_hours, gpu=device.name, mfu=mfu))


def keep_within(plan: Plan, budget: Budget) -> Plan:
    """``plan`` (re-planned, e.g. its batch rounded to a GPU count) cut to whole steps within
    ``budget`` (a plan's ``budget``), the budget record kept and updated."""
    convention = next(k for k, v in CONVENTION_NAMES.items() if v == budget.convention)
    used = cost(plan, convention)
    if used > budget.flops:
        steps = plan.steps - math.ceil((used - budget.flops) / (used / plan.steps))
        if steps < 1:
            raise CgptError(f"not one step of this plan fits the budget of {budget.flops:.3g}")
        note = (
            f"steps cut from {plan.steps:,} to {steps:,} to stay within the budget after the "
            "batch was rounded"
        )
        plan = plan.replace(
            steps=steps,
            tokens=steps * plan.global_batch_tokens,
            decay_steps=steps - plan.warmup_steps,
            notes=plan.notes + (note,),
        )
        used = cost(plan, convention)
    return plan.replace(budget=replace(budget, used_flops=used, share=used / budget.flops))


def _plan_for_budget(
    flops: float,
    convention: str,
    tokens_per_param: float | None,
    law: R.ScalingLaw | None,
    fit: R.Fit | None,
    seq_len: int,
    vocab_size: int,
    kw: dict,
) -> Plan:
    """The one budget -> N -> plan path of both budgets (``kw``: plan_for_params' options)."""
    if tokens_per_param is None:
        tpp = (fit or R.DEFAULT_FIT).tokens_per_param
    else:
        tpp = check_positive(tokens_per_param, "tokens per parameter")
    pc = kw.get("param_count", "total")
    n = params_for_budget(flops, tpp, convention, vocab_size, seq_len, pc)

    def at(n_: float, tpp_: float = tpp) -> Plan:
        return plan_for_params(n_, tpp_, law, fit=fit, seq_len=seq_len, vocab_size=vocab_size, **kw)

    # the shape nearest N, trained on the whole steps the budget buys (tokens/param moves
    # off tpp by the shape's rounding); the rule plans (tpp exactly) below and above it
    rule = at(n)
    filled = at(n, tpp * flops / cost(rule, convention))
    if filled.model != rule.model:  # the fill never changes the shape (N alone decides it)
        raise AssertionError("a budget fill changed the shape")
    plan = with_budget(filled, flops, convention, _neighbours(at, n, flops, convention))
    if round(filled.tokens / filled.params, 2) != round(tpp, 2):
        note = (
            f"{filled.tokens / filled.params:.2f} tokens/param (rule: {tpp:g}): the budget buys "
            f"that many whole steps of the family's nearest shape ({filled.name})"
        )
        plan = plan.replace(notes=plan.notes + (note,))
    assert plan.budget is not None  # with_budget recorded it
    return keep_within(plan, plan.budget)


def cost(plan: Plan, convention: str) -> float:
    """The plan's training FLOPs in a budget's convention ("algorithmic" or "mfu")."""
    return float(plan.train_flops if convention == "algorithmic" else plan.train_flops_mfu)


def _neighbours(at, n: float, flops: float, convention: str) -> tuple[Plan, Plan | None]:
    """The largest rule plan (``at(N)``) within ``flops`` and the next one up: the family's
    shapes and whole steps make the cost a staircase in N, so walk it 1% at a time."""
    plan, above = at(n), None
    for _ in range(500):
        if cost(plan, convention) <= flops:
            break
        above, n = plan, n * 0.99
        while at(n).model == above.model and n > 1:
            n *= 0.99
        plan = at(n)
    else:
        raise CgptError(f"no plan of this family fits {flops:.3g} FLOPs")
    m = n
    for _ in range(500):
        if above is not None:
            break
        m *= 1.01
        nxt = at(m)
        if cost(nxt, convention) > flops:
            above = nxt
        elif nxt.model != plan.model:
            plan = nxt
    return plan, above


def with_budget(plan: Plan, flops: float, convention: str, neighbours=()) -> Plan:
    """``plan`` with its budget recorded in ``plan.budget``: the ceiling, its convention,
    the share used and the rule plans just below and above the ceiling."""
    used = cost(plan, convention)
    info = Budget(
        flops=flops,
        convention=CONVENTION_NAMES[convention],
        used_flops=used,
        share=used / flops,
        neighbours=tuple(
            Neighbour(p.name, p.params, cost(p, convention)) for p in neighbours if p is not None
        ),
    )
    return plan.replace(budget=info)
