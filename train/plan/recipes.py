"""The batch and peak-LR laws a rule-based plan can use (``cgpt plan --recipe NAME``).

A recipe picks two numbers for a model trained on D tokens: the global batch (sequences of
the plan's seq_len) and the peak LR. Everything else (tokens, steps, warmup, decay, min LR,
AdamW) stays the family's rules, so plans of different recipes differ only there. The
constants and the papers are in cgpt.train.plan.rules (docs/REFERENCE.md, Related scaling
laws):

  ========  ==========================================  =================================
  recipe    what the law reads                          batch / peak LR
  ========  ==========================================  =================================
  cerebras  total parameters (what it was fitted to)    the family's fits to the 7 runs
  deepseek  C = M·D, M = non-embedding FLOPs per token  0.2920·C^0.3271 tokens / 0.3118·C^-0.125
  ========  ==========================================  =================================
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
    if recipe in R.UNVERIFIED_RECIPES:
        raise CgptError(R.UNVERIFIED_RECIPES[recipe])
    if recipe not in R.RECIPE_NAMES:
        raise CgptError(f"unknown recipe {recipe!r}; choose one of {', '.join(R.RECIPE_NAMES)}")


def choose(recipe: str, model: GPTConfig, tokens: float, seq_len: int) -> RecipeChoice:
    """The global batch (sequences of ``seq_len``) and peak LR that ``recipe``'s laws give
    for ``model`` trained on ``tokens`` tokens."""
    check_recipe(recipe)
    if recipe == "deepseek":
        return _deepseek(model, tokens, seq_len)
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
