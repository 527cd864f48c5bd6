"""Continued pretraining: a model whose weights come from a source, trained on new tokens
with a re-warmed LR schedule (``cgpt plan --init-from SRC``).
"""

from __future__ import annotations

from dataclasses import replace

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.sizes import num_params
from cgpt.train.checks import FieldError, check_positive, is_positive
from cgpt.train.plan import rules as R
from cgpt.train.plan.result import Plan, make_plan

# Re-warm and re-decay (docs/REFERENCE.md, Related scaling laws: Ibrahim et al. 2024, arXiv
# 2403.08763; Gupta et al. 2023, arXiv 2308.04014): a linear warmup over 1% of the new steps
# back to the source's own peak LR, then decay to 10% of it over the rest.
CPT_WARMUP_FRACTION = 0.01


def plan_continued(
    model: GPTConfig,
    *,
    tokens: float | None = None,
    tokens_per_param: float | None = None,
    seq_len: int = R.SEQ_LEN,
    source_lr: float | None = None,
    lr_from: str = "",
    lr: float | None = None,
    global_batch_seqs: int | None = None,
    decay: str | None = None,
    name: str = "continued",
) -> Plan:
    """Continued pretraining of ``model`` (its weights come from a source) on ``tokens``
    (or ``tokens_per_param`` × params) new tokens: the family's batch rule for its size, a
    re-warmed schedule (warmup 1% of the steps, at least 1), peak = ``lr`` or the source's
    original peak ``source_lr`` (else the family's LR rule, with a note), decay to 10%."""
    if (tokens is None) == (tokens_per_param is None):
        raise FieldError(
            "continued pretraining needs exactly one of {f.tokens}, {f.tokens_per_param}"
        )
    params = num_params(model)
    if tokens is None:
        tokens = check_positive(tokens_per_param, "tokens per parameter") * params
    if not is_positive(tokens):
        raise FieldError("{f.tokens} must be a positive number, got {value!r}", value=tokens)
    if decay is not None and decay not in ("linear", "cosine", "wsd"):
        raise CgptError(f"decay must be linear, cosine or wsd, got {decay!r}")
    seq_len = min(seq_len, model.n_positions)
    batch = global_batch_seqs or R.batch_seqs_rule(params, seq_len)
    steps = R.steps_rule(tokens, batch * seq_len)
    if steps < 1:
        raise FieldError(
            f"{tokens:,.0f} tokens is less than one batch of {batch * seq_len:,} tokens; "
            "raise {f.tokens} or lower {f.batch_seqs}"
        )
    warmup = max(1, round(CPT_WARMUP_FRACTION * steps)) if steps > 1 else 0
    if lr:
        peak, why = lr, "--lr"
    elif source_lr:
        peak, why = source_lr, lr_from or "the source's peak LR"
    else:
        peak, why = R.lr_rule(params), "the family's LR rule (the source's own peak LR is unknown)"
    notes = (
        f"continued pretraining: re-warm over {warmup:,} steps (1% of {steps:,}) to peak "
        f"{peak:.3g} ({why}), then {decay or R.decay_rule(params)} decay to 10% "
        "(Ibrahim et al. 2024, arXiv 2403.08763; docs/REFERENCE.md, Related scaling laws)",
        "predicted loss: the from-scratch law at this compute; a continued run starts lower",
    )
    plan = make_plan(
        name,
        model,
        seq_len=seq_len,
        tokens=steps * batch * seq_len,
        steps=steps,
        global_batch_seqs=batch,
        lr=peak,
        min_lr=float(f"{peak * R.MIN_LR_FRACTION:.3g}"),
        warmup_steps=warmup,
        decay=decay or R.decay_rule(params),
        decay_steps=steps - warmup,
        adam_eps=R.adam_eps_rule(params),
        source="continued",
        notes=notes,
    )
    return replace(plan, recipe="continued", peak_lr_from=why)
