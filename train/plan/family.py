"""Plans by the family's rules: a shape (``plan_for_shape``) or a parameter count
(``plan_for_params``, the shape from cgpt.train.plan.shape) -> a Plan.

Tokens = tokens_per_param × N, steps, warmup, decay, Adam eps and the init follow
cgpt.train.plan.rules; the batch and peak LR come from the recipe's laws
(cgpt.train.plan.recipes) unless given.
"""

from __future__ import annotations

from dataclasses import replace

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, PUBLISHED, num_params
from cgpt.train.checks import check_positive
from cgpt.train.plan import recipes
from cgpt.train.plan import rules as R
from cgpt.train.plan.result import Plan, make_plan
from cgpt.train.plan.shape import param_counter, shape_for_params


def plan_for_shape(
    n_layer: int,
    n_embd: int,
    n_head: int | None = None,
    *,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    name: str | None = None,
    fit: R.Fit | None = None,
    global_batch_seqs: int | None = None,
    lr: float | None = None,
    decay: str | None = None,
    cooldown_fraction: float | None = None,
    recipe: str = "cerebras",
    param_count: str = "total",
) -> Plan:
    """A model of this shape trained by the family's rules (cgpt.train.plan.rules docstring).

    ``decay`` overrides the rule's linear/cosine choice ("wsd": warmup-stable-decay with a
    linear cooldown over the last ``cooldown_fraction`` of the steps, default 0.2;
    cgpt.train.plan.schedule). ``recipe`` picks the batch and LR laws (one of
    rules.RECIPE_NAMES; cgpt.train.plan.recipes).
    ``param_count`` is the N in tokens = tokens_per_param × N: "total" or "non-embedding"
    (Kaplan/DeepSeek); each recipe's law reads the N it was fitted with, whatever this is."""
    fit = fit or R.DEFAULT_FIT
    count = param_counter(param_count)
    recipes.check_recipe(recipe)
    _check_schedule(decay, cooldown_fraction)
    tpp = check_positive(
        tokens_per_param if tokens_per_param is not None else fit.tokens_per_param,
        "tokens per parameter",
    )
    cfg = _shape_model(n_layer, n_embd, n_head, seq_len, vocab_size)
    params, counted = num_params(cfg), count(cfg)
    if counted <= 0:
        raise CgptError(f"this shape has no {param_count} parameters to plan tokens for")
    target_tokens = tpp * counted
    law_choice = recipes.choose(recipe, cfg, target_tokens, seq_len)
    batch = global_batch_seqs or law_choice.global_batch_seqs
    batch_tokens = batch * seq_len
    steps = R.steps_rule(target_tokens, batch_tokens)
    if steps < 1:
        raise CgptError(
            f"{tpp:g} tokens/param × {counted:,} {param_count} params is less than one batch "
            f"of {batch_tokens:,} tokens; raise --tokens-per-param or lower the batch"
        )
    peak = lr or law_choice.lr
    warmup = R.warmup_rule(batch_tokens, steps)
    plan = make_plan(
        name or f"{_short(params)}-L{n_layer}-d{n_embd}",
        cfg,
        seq_len=seq_len,
        tokens=steps * batch_tokens,
        steps=steps,
        global_batch_seqs=batch,
        lr=peak,
        min_lr=float(f"{peak * R.MIN_LR_FRACTION:.3g}"),
        warmup_steps=warmup,
        decay=decay or R.decay_rule(params),
        decay_steps=steps - warmup,
        cooldown_fraction=cooldown_fraction,
        adam_eps=R.adam_eps_rule(params),
        target_tokens_per_param=tpp,
        law=law or fit.law,
        source="rules",
        notes=_published_shape_notes(n_layer, n_embd) + law_choice.notes,
    )
    return replace(plan, recipe=recipe, param_count=param_count, counted_params=counted)


def _shape_model(
    n_layer: int, n_embd: int, n_head: int | None, seq_len: int, vocab_size: int
) -> GPTConfig:
    """The model of this shape (its sizes checked), heads and out-projection init by the
    rules."""
    for what, v in (
        ("layers", n_layer),
        ("width", n_embd),
        ("seq_len", seq_len),
        ("vocab size", vocab_size),
    ):
        check_positive(v, what, integer=True)
    probe = GPTConfig(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head or R.n_head_rule(n_embd),
        n_positions=seq_len,
        vocab_size=vocab_size,
    )
    return replace(probe, out_init_std=R.out_init_std_rule(num_params(probe), n_layer))


def _check_schedule(decay: str | None, cooldown_fraction: float | None) -> None:
    """The decay shape is linear, cosine or wsd; a cooldown fraction in (0, 1] needs wsd."""
    if decay is not None and decay not in ("linear", "cosine", "wsd"):
        raise CgptError(f"decay must be linear, cosine or wsd, got {decay!r}")
    if cooldown_fraction is not None:
        if decay != "wsd":
            raise CgptError("a cooldown fraction needs the wsd schedule (--decay wsd)")
        if not (isinstance(cooldown_fraction, (int, float)) and 0 < cooldown_fraction <= 1):
            raise CgptError(f"the cooldown fraction must be in (0, 1], got {cooldown_fraction!r}")


def _published_shape_notes(n_layer: int, n_embd: int) -> tuple[str, ...]:
    """A note per way the paper's recipe for a published shape differs from the rules."""
    return tuple(
        f"published {p.name} shape; the paper's recipe differs: {msg}"
        for p in PUBLISHED.values()
        if (p.n_layer, p.n_embd) == (n_layer, n_embd)
        for (n, _), msg in R.DEVIATIONS.items()
        if n == p.name
    )


def plan_for_params(
    params: float,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    fit: R.Fit | None = None,
    name: str | None = None,
    param_count: str = "total",
    **kw,
) -> Plan:
    """A compute-optimal plan for about `params` parameters (shape chosen by the rules)."""
    check_positive(params, "parameter count")
    if tokens_per_param is not None:
        check_positive(tokens_per_param, "tokens per parameter")
    layers, width, heads = shape_for_params(params, vocab_size, seq_len, param_count)
    return plan_for_shape(
        layers,
        width,
        heads,
        tokens_per_param=tokens_per_param,
        law=law,
        seq_len=seq_len,
        vocab_size=vocab_size,
        fit=fit,
        name=name,
        param_count=param_count,
        **kw,
    )


def _short(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))
