"""The batch and peak-LR laws a rule-based plan can use (``cgpt plan --recipe NAME``).

A recipe picks the global batch and the peak LR for a model trained on D tokens (cerebras,
deepseek, porian, olmo); everything else stays the family's rules, so plans of different
recipes differ only there. Constants and papers: cgpt.train.plan.rules (docs/REFERENCE.md,
Related scaling laws). The laws, recipe by recipe: docs/DESIGN-NOTES.md, plan/recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.sizes import num_params
from cgpt.train.plan import rules as R


@dataclass(frozen=True)
class RecipeChoice:
    global_batch_seqs: int
    lr: float
    notes: tuple[str, ...] = ()


def check_recipe(recipe: str) -> None:
    if recipe not in R.RECIPE_NAMES:
        raise CgptError(f"unknown recipe {recipe!r}; choose one of {', '.join(R.RECIPE_NAMES)}")


def porian_params(model: GPTConfig) -> int:
    """N as Porian et al. count it: the weights of every matrix multiply, the output head
    included and the token/position embeddings, biases and norms left out. cgpt ties the head
    to wte, so its vocab·d weights count once: L·(4·d² + 2·d·d_ffn) + vocab·d."""
    d, f = model.n_embd, model.n_inner or 4 * model.n_embd
    return model.n_layer * (4 * d * d + 2 * d * f) + model.vocab_size * d


def choose(recipe: str, model: GPTConfig, tokens: float, seq_len: int) -> RecipeChoice:
    """The global batch (sequences of ``seq_len``) and peak LR that ``recipe``'s laws give
    for ``model`` trained on ``tokens`` tokens."""
    check_recipe(recipe)
    if recipe == "deepseek":
        return _deepseek(model, tokens, seq_len)
    if recipe in ("porian", "olmo"):
        return _porian(recipe, model, seq_len)
    params = num_params(model)
    return RecipeChoice(R.batch_seqs_rule(params, seq_len), R.lr_rule(params))


def _deepseek(model: GPTConfig, tokens: float, seq_len: int) -> RecipeChoice:
    m = R.deepseek_flops_per_token(model.n_layer, model.n_embd, seq_len)
    c = m * tokens
    batch = max(1, round(R.deepseek_batch_tokens(c) / seq_len))
    note = (
        f"recipe deepseek (DeepSeek LLM, arXiv 2401.02954): C = M·D = {m:.4g} × "
        f"{tokens:.4g} = {c:.4g} non-embedding FLOPs; B_opt = 0.2920·C^0.3271 = "
        f"{R.deepseek_batch_tokens(c):,.0f} tokens -> {batch} sequences; "
        f"η_opt = 0.3118·C^-0.1250 = {R.deepseek_lr(c):.4g}"
    )
    return RecipeChoice(batch, float(f"{R.deepseek_lr(c):.3g}"), (note,))


def _porian(recipe: str, model: GPTConfig, seq_len: int) -> RecipeChoice:
    n = porian_params(model)
    tokens = R.porian_batch_tokens(n)
    batch = R.recipe_batch_seqs(tokens, seq_len)
    lr = R.porian_lr(n) * (R.OLMO_LR_FACTOR if recipe == "olmo" else 1.0)
    law = (
        f"N = {n:,} (matmul weights, head included); B = 160·(N/108e6)^(2/3) = "
        f"{tokens / R.PORIAN_SEQ_LEN:.1f} sequences of 2048 = {tokens:,.0f} tokens -> "
        f"{batch} sequences of {seq_len}; η = 0.0047·(N/108e6)^(-1/3) = {R.porian_lr(n):.4g}"
    )
    if recipe == "olmo":
        note = (
            "recipe olmo (OLMo-core's model ladder, Porian et al.'s laws with the LR halved): "
            f"{law}, × 0.5 = {lr:.4g}"
        )
    else:
        note = f"recipe porian (Porian et al. 2024, arXiv 2406.19146, their rounded fits): {law}"
    return RecipeChoice(batch, float(f"{lr:.3g}"), (note,))
