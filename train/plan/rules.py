"""The Cerebras-GPT recipe as data, and the rules fitted to it (pure functions).

``RECIPES`` is the published recipe of each of the seven sizes (docs/REFERENCE.md, Training
recipe, The 13B batch change); the rules (tokens, steps, warmup, batch, LR, decay, eps, init,
shape) extend the family to any size, each fitted to or read off that table.
``rule_deviations()`` names where the paper is outside ``TOLERANCE``; ``load_fit`` swaps in a
user's sweep fit. The rule table: docs/DESIGN-NOTES.md, plan/rules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.sizes import CONTEXT, PUBLISHED

SEQ_LEN = CONTEXT  # docs/REFERENCE.md, Training recipe: 2048 for every size
WARMUP_TOKENS = 375e6  # GPT-3 (Brown et al. 2020) warmup; the published warmups are floor(375e6/B)
WARMUP_MAX_FRACTION = 0.2  # beyond the paper: all seven warm up for <= 17% of their steps
MIN_LR_FRACTION = 0.1  # docs/REFERENCE.md, Training recipe: decay to 10%
TOKENS_PER_PARAM = 20.0  # docs/REFERENCE.md, Training recipe: ≈ 20 × params
BATCH_MULTIPLE = 8  # every published batch (120, 264, 528, 720, 1040, 1080) is a multiple of 8

# Least-squares fits of log(y) = log(COEF) + EXP·log(params) over the seven sizes
# (tests/test_plan.py re-fits them from RECIPES and checks these constants).
BATCH_COEF, BATCH_EXP = 67.36, 0.4521  # y = batch in tokens; 13B at its final 1080 seqs
LR_COEF, LR_EXP = 0.4853, -0.3640  # y = peak LR

# Rules vs published: a rule value within these factors of the paper's counts as reproduced.
TOLERANCE = {"global_batch_seqs": 1.25, "lr": 1.25}


@dataclass(frozen=True)
class Phase:
    """One constant-batch stretch of a published run (docs/REFERENCE.md, The 13B batch change)."""

    global_batch_seqs: int
    steps: int
    schedule_start_step: int
    warmup_steps: int
    decay_steps: int


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    global_batch_seqs: int
    steps: int  # optimizer steps actually run, all phases
    warmup_steps: int
    decay: str
    adam_eps: float
    phases: tuple[Phase, ...] = ()  # empty: one phase from the fields above


# docs/REFERENCE.md, Training recipe (official modelzoo configs). Common to all: AdamW
# betas (0.9, 0.95), weight decay 0.1, grad clip 1.0, seq 2048, min LR 10% of peak.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("111M", 6.0e-4, 120, 9_037, 1_525, "linear", 1e-8),
        Recipe("256M", 6.0e-4, 264, 9_468, 693, "linear", 1e-8),
        Recipe("590M", 2.0e-4, 264, 21_836, 693, "linear", 1e-8),
        Recipe("1.3B", 2.0e-4, 528, 24_334, 346, "cosine", 1e-8),
        Recipe("2.7B", 2.0e-4, 528, 49_041, 346, "cosine", 1e-8),
        Recipe("6.7B", 1.2e-4, 1040, 62_522, 176, "linear", 1e-9),
        # 13B grew its batch mid-run: 57,000 steps at 720 seqs (cosine planned over
        # 174,081 decay steps), then 1080 seqs with the counter rescaled to 38,000
        # (= 57,000·720/1080), ending at counter 116,223 (116,054 decay steps after a
        # 169-step warmup). The LR is not continuous at the switch: the published run
        # restarted its schedule with the new phase's warmup/decay lengths.
        Recipe(
            "13B",
            1.2e-4,
            720,
            57_000 + (116_223 - 38_000),
            254,
            "cosine",
            1e-9,
            phases=(
                Phase(720, 57_000, 0, 254, 174_081),
                Phase(1080, 116_223 - 38_000, 38_000, 169, 116_054),
            ),
        ),
    ]
}

# Where the paper's choice differs from the smooth rules by more than TOLERANCE (or in kind);
# tests assert this is exactly the set rule_deviations() finds.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("256M", "global_batch_seqs"): "the paper used the 590M batch (264) at 256M; rule: 208",
    ("256M", "lr"): "the paper kept the 111M peak LR 6e-4 at 256M",
    ("590M", "lr"): "the paper dropped to 2e-4 already at 590M",
    ("6.7B", "decay"): "the paper used linear decay at 6.7B (cosine at 1.3B, 2.7B and 13B)",
    ("2.7B", "n_head"): "the paper used 32 heads of d_head 80 at 2.7B (rule: d_head 128)",
    ("13B", "batch_schedule"): "the paper grew the batch 720 -> 1080 mid-run; rules plan one phase",
}


# ---- rules -----------------------------------------------------------------------------
def batch_seqs_rule(params: float, seq_len: int = SEQ_LEN) -> int:
    """Global batch in sequences: the fitted power law, rounded to a multiple of 8."""
    tokens = BATCH_COEF * params**BATCH_EXP
    return max(BATCH_MULTIPLE, BATCH_MULTIPLE * round(tokens / seq_len / BATCH_MULTIPLE))


def lr_rule(params: float) -> float:
    lr = LR_COEF * params**LR_EXP
    return float(f"{lr:.2g}")


def warmup_rule(batch_tokens: int, steps: int) -> int:
    return min(int(WARMUP_TOKENS // batch_tokens), int(WARMUP_MAX_FRACTION * steps))


def steps_rule(tokens: float, batch_tokens: int) -> int:
    return int(tokens // batch_tokens)


def decay_rule(params: float) -> str:
    return "cosine" if params >= 1e9 else "linear"


def adam_eps_rule(params: float) -> float:
    return 1e-8 if params < 5e9 else 1e-9


def out_init_std_rule(params: float, n_layer: int) -> float:
    return 0.0025 if params >= 1e9 else 0.02 / math.sqrt(2 * n_layer)


def head_dim_rule(n_embd: int) -> int:
    return 64 if n_embd < 1536 else 128


def n_head_rule(n_embd: int) -> int:
    """Heads of d_head 64/128; for widths it doesn't divide, the divisor nearest that d_head."""
    target = head_dim_rule(n_embd)
    if n_embd % target == 0:
        return n_embd // target
    divisors = [h for h in range(1, n_embd + 1) if n_embd % h == 0]
    return min(divisors, key=lambda h: (abs(n_embd / h - target), h))


def width_grid(n_embd: float) -> int:
    """Widths are multiples of the d_head the rule uses there."""
    return head_dim_rule(int(n_embd))


_SHAPES = sorted({(s.n_embd, s.n_layer) for s in PUBLISHED.values()})


def layers_for_width(n_embd: float) -> float:
    """Depth for a width, interpolated log-log between the published (d, L) pairs."""
    (d0, l0), (d1, l1) = _SHAPES[0], _SHAPES[-1]
    if n_embd <= d0:
        return n_embd * l0 / d0  # constant aspect ratio below the family
    if n_embd >= d1:
        return n_embd * l1 / d1
    for (da, la), (db, lb) in zip(_SHAPES, _SHAPES[1:]):
        if da <= n_embd <= db:
            t = math.log(n_embd / da) / math.log(db / da)
            return math.exp(math.log(la) + t * math.log(lb / la))
    raise AssertionError("unreachable")


# ---- other papers' batch and LR laws (cgpt plan --recipe) ----------------------------------
# A recipe sets the global batch and the peak LR; tokens, steps, warmup, decay, min LR and
# AdamW stay the family's rules above, so recipes compare on the same runs.
RECIPE_NAMES = ("cerebras", "deepseek", "porian", "olmo")

# DeepSeek LLM (Bi et al. 2024, arXiv 2401.02954; docs/REFERENCE.md, Related scaling laws):
# B_opt = 0.2920·C^0.3271 tokens, η_opt = 0.3118·C^-0.1250, with C = M·D in their
# convention, M = non-embedding FLOPs per token = 72·n_layer·d_model² + 12·n_layer·d_model·l_seq
DEEPSEEK_BATCH_COEF, DEEPSEEK_BATCH_EXP = 0.2920, 0.3271
DEEPSEEK_LR_COEF, DEEPSEEK_LR_EXP = 0.3118, -0.1250


def deepseek_flops_per_token(n_layer: int, d_model: int, seq_len: int) -> float:
    """M, DeepSeek LLM's non-embedding FLOPs per token (attention included; d_ffn = 4·d)."""
    return 72.0 * n_layer * d_model**2 + 12.0 * n_layer * d_model * seq_len


def deepseek_batch_tokens(compute: float) -> float:
    """B_opt in tokens for compute C = M·D (DeepSeek convention)."""
    return DEEPSEEK_BATCH_COEF * compute**DEEPSEEK_BATCH_EXP


def deepseek_lr(compute: float) -> float:
    """η_opt for compute C = M·D (DeepSeek convention)."""
    return DEEPSEEK_LR_COEF * compute**DEEPSEEK_LR_EXP


# Porian et al. 2024 (arXiv 2406.19146; docs/REFERENCE.md, Related scaling laws): the rounded
# power laws of their hyperparameter sweep, B* = 160·(N/108e6)^(2/3) sequences of 2048 tokens
# and η* = 0.0047·(N/108e6)^(-1/3), N = the parameters of every matmul, the output head
# included and the embeddings left out. Read in their code, github.com/formll/
# resolving-scaling-law-discrepancies, plotting.py ("Rounded fit"; commit 0dc60d9).
PORIAN_N0 = 108e6
PORIAN_BATCH_SEQS, PORIAN_BATCH_EXP, PORIAN_SEQ_LEN = 160.0, 2 / 3, 2048
PORIAN_LR, PORIAN_LR_EXP = 0.0047, -1 / 3
# OLMo-core's model ladder (github.com/allenai/OLMo-core, src/olmo_core/model_ladder/
# wsds_chinchilla_run_configurator.py, commit fa6c501) applies Porian's laws, then halves the
# LR ("empirically near optimal, at least for Olmo models", with its WSD-S schedule).
OLMO_LR_FACTOR = 0.5
# Batches from these laws: the nearest whole number of sequences; from 64 sequences up, the
# nearest multiple of BATCH_MULTIPLE = 8 (at most 6.25% off the law; splits over 8-GPU nodes).
RECIPE_BATCH_MULTIPLE_FROM = 64


def porian_batch_tokens(n: float) -> float:
    """Porian et al.'s B*(N) in tokens: 160 sequences of 2048 at N = 108e6, ∝ N^(2/3)."""
    return PORIAN_BATCH_SEQS * PORIAN_SEQ_LEN * (n / PORIAN_N0) ** PORIAN_BATCH_EXP


def porian_lr(n: float) -> float:
    """Porian et al.'s η*(N): 0.0047 at N = 108e6, ∝ N^(-1/3)."""
    return PORIAN_LR * (n / PORIAN_N0) ** PORIAN_LR_EXP


def recipe_batch_seqs(batch_tokens: float, seq_len: int) -> int:
    """A law's batch in tokens -> whole sequences of ``seq_len`` (rounding: see above)."""
    seqs = batch_tokens / seq_len
    if seqs >= RECIPE_BATCH_MULTIPLE_FROM:
        return BATCH_MULTIPLE * round(seqs / BATCH_MULTIPLE)
    return max(1, round(seqs))


# ---- scaling laws and the tokens-per-param source (the seam for sweep fits) ---------------
@dataclass(frozen=True)
class ScalingLaw:
    """L(C) = (C / a) ** -b + c, C = training FLOPs in the paper's algorithmic convention."""

    a: float = 5.984e22  # docs/REFERENCE.md, Results: the paper's fit
    b: float = 0.0737
    c: float = 0.5066
    source: str = "Cerebras-GPT paper"
    # from a sweep's fit.json: bootstrap (a, b, c) refits, the residual noise scale, and a
    # line on how well the sweep predicted its own largest point (cgpt.train.fits.fit)
    draws: tuple[tuple[float, float, float], ...] = field(default=(), compare=False, repr=False)
    residual_scale: float = field(default=0.0, compare=False)
    check: str = field(default="", compare=False)

    def loss(self, flops: float) -> float:
        return (flops / self.a) ** -self.b + self.c

    def interval(self, flops: float) -> tuple[float, float] | None:
        """95% prediction interval of the loss at `flops`: the bootstrap refits' curves plus
        the sweep's residual noise (None without draws). Beyond the sweep's compute it is an
        extrapolation: it covers the fit's uncertainty, not a change of regime."""
        if len(self.draws) < 20:
            return None
        import numpy as np

        d = np.asarray(self.draws, dtype=float)
        curve = (flops / d[:, 0]) ** -d[:, 1] + d[:, 2]
        rng = np.random.default_rng(0)
        samples = np.repeat(curve, 10) + rng.normal(0, self.residual_scale, 10 * len(curve))
        lo, hi = np.percentile(samples, [2.5, 97.5])
        return float(lo), float(hi)


@dataclass(frozen=True)
class Fit:
    """What the planner takes from a scaling fit: tokens per parameter and a loss law."""

    tokens_per_param: float = TOKENS_PER_PARAM
    law: ScalingLaw = ScalingLaw()
    source: str = "default (Chinchilla 20 tokens/param, Cerebras-GPT law)"


DEFAULT_FIT = Fit()


def _positive(v, what: str, path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CgptError(f"{path}: {what} must be a positive number, got {v!r}")
    return float(v)


def load_fit(path: str | Path) -> Fit:
    """Read a fit.json: {"tokens_per_param": float|null, "loss_law": {"form": "paper",
    "a": .., "b": .., "c": ..} | null, ...other keys ignored}. null keeps the default."""
    p = Path(path)
    if not p.is_file():
        raise CgptError(f"fit file {str(p)!r} not found")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CgptError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CgptError(f"{p}: expected a JSON object with tokens_per_param and loss_law")
    tpp = d.get("tokens_per_param")
    tpp = TOKENS_PER_PARAM if tpp is None else _positive(tpp, "tokens_per_param", p)
    law, raw = ScalingLaw(), d.get("loss_law")
    if raw is not None:
        if not isinstance(raw, dict) or raw.get("form", "paper") != "paper":
            raise CgptError(
                f'{p}: loss_law must be {{"form": "paper", "a", "b", "c"}} '
                f"(L(C) = (C/a)^-b + c), got {raw!r}"
            )
        a, b = _positive(raw.get("a"), "loss_law.a", p), _positive(raw.get("b"), "loss_law.b", p)
        c = raw.get("c")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise CgptError(f"{p}: loss_law.c must be a number >= 0, got {c!r}")
        law = ScalingLaw(
            a,
            b,
            float(c),
            source=str(p),
            draws=_draws(raw.get("draws"), p),
            residual_scale=float(raw.get("residual_scale") or 0.0),
            check=_check_line(d.get("prediction")),
        )
    return Fit(tpp, law, source=str(p))


def _draws(raw, path) -> tuple[tuple[float, float, float], ...]:
    if raw is None:
        return ()
    try:
        out = tuple((float(a), float(b), float(c)) for a, b, c in raw)
    except (TypeError, ValueError):
        raise CgptError(f"{path}: loss_law.draws must be a list of [a, b, c] triples") from None
    if not all(math.isfinite(v) for t in out for v in t) or any(t[0] <= 0 for t in out):
        raise CgptError(f"{path}: loss_law.draws holds non-finite or non-positive values")
    return out


def _check_line(pred) -> str:
    """One line on the sweep's own leave-largest-out prediction (empty without one)."""
    llo = (pred or {}).get("leave_largest_out") if isinstance(pred, dict) else None
    if not isinstance(llo, dict) or "rel_error" not in llo:
        return ""
    inside = llo.get("inside_pi95")
    where = "inside" if inside is True else "OUTSIDE" if inside is False else "no interval for"
    return (
        f"the sweep's law fitted without its largest point predicted that point with error "
        f"{100 * float(llo['rel_error']):+.2f}% ({where} its 95% interval)"
    )
