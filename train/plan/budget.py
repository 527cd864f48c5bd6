"""A compute budget -> a plan: FLOPs (``plan_for_flops``) or GPU-hours on a device
(``plan_for_gpu_hours``). Both solve for the N whose family shape, trained on
tokens_per_param × N tokens, costs the budget (``params_for_budget``), then plan N by the
rules (cgpt.train.plan.family.plan_for_params).
"""

from __future__ import annotations

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, flops_per_token_algorithmic, flops_per_token_mfu
from cgpt.train.cli_args import check_positive
from cgpt.train.plan import rules as R
from cgpt.train.plan.cluster import check_mfu
from cgpt.train.plan.devices import Device
from cgpt.train.plan.family import plan_for_params
from cgpt.train.plan.result import Plan
from cgpt.train.plan.shape import bisect, continuous_params, curve_shape, param_counter

# FLOPs per token in each convention (docs/REFERENCE.md, FLOP conventions)
PER_TOKEN = {"algorithmic": flops_per_token_algorithmic, "mfu": flops_per_token_mfu}


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
        raise CgptError(
            f"a budget of {flops:.3g} FLOPs is below the smallest model in this "
            f"family ({cost(64):.3g} FLOPs at width 64); plan a shape with --layers/"
            f"--width instead"
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
    **kw,
) -> Plan:
    """Compute-optimal plan for a training budget in algorithmic FLOPs (the paper's
    convention, the one its loss law uses): N and D = tpp·N grow together."""
    check_positive(flops, "FLOP budget")
    return _plan_for_budget(
        flops, "algorithmic", tokens_per_param, law, fit, seq_len, vocab_size, kw
    )


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
    return _plan_for_budget(flops, "mfu", tokens_per_param, law, fit, seq_len, vocab_size, kw)


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
    return plan_for_params(n, tpp, law, fit=fit, seq_len=seq_len, vocab_size=vocab_size, **kw)
