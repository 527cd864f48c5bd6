"""Planning for inference cost (Sardana et al. 2023, "Beyond Chinchilla-Optimal: Accounting
for Inference in Language Model Scaling Laws", arXiv 2401.00448): pure functions.

A model that will serve T tokens of inference costs 6·N·D to train and about 2·N·T to run.
Given a training budget C, the Chinchilla (compute-optimal) plan reaches some loss L*; among
all (N, D) that reach the same L* under L(N, D) = E + A/N^α + B/D^β, this module picks the
one that minimises the lifetime cost 6·N·D + 2·N·T. For T = 0 that is the compute-optimal
point itself; as T grows, N shrinks and D grows (more training for a cheaper model to run).

FLOPs here are the 6·N·D / 2·N rule of thumb (docs/REFERENCE.md, Related scaling laws), the
convention the L(N, D) fits were made in; N is the total parameter count.

The law defaults to Besiroglu et al. 2024's replication of Chinchilla's approach 3
(docs/REFERENCE.md, Related scaling laws); a sweep's approach-3 fit (fit.json "chinchilla")
can replace it (:func:`law_from_fit`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.checks import FieldError


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^α + B/D^β (N parameters, D training tokens)."""

    E: float = 1.82  # Besiroglu et al. 2024 (docs/REFERENCE.md, Related scaling laws)
    A: float = 482.01
    B: float = 2085.43
    alpha: float = 0.3478
    beta: float = 0.3658
    source: str = "Besiroglu et al. 2024 (arXiv 2404.10102) replication of Chinchilla"

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def tokens_for(self, n: float, loss: float) -> float:
        """D with L(n, D) = loss (inf when n alone cannot reach it)."""
        gap = loss - self.E - self.A / n**self.alpha
        return (self.B / gap) ** (1 / self.beta) if gap > 0 else math.inf

    def min_params(self, loss: float) -> float:
        """The N below which no amount of data reaches `loss` (D -> infinity)."""
        return (self.A / (loss - self.E)) ** (1 / self.alpha)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L at 6·N·D = flops (Hoffmann et al. 2022, eq. 4):
        N_opt = G·(C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β))."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return n, flops / 6 / n


DEFAULT_LAW = ChinchillaLaw()
_KEYS = ("E", "A", "B", "alpha", "beta")


def law_from_fit(path: str | Path) -> ChinchillaLaw:
    """The approach-3 law of a sweep's fit.json ("chinchilla": {E, A, B, alpha, beta}, as
    `cgpt sweep fit` writes it; the five keys at the top level are accepted too)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise CgptError(f"fit file {str(p)!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CgptError(f"{p}: not valid JSON ({e})") from None
    src = d.get("chinchilla") if isinstance(d, dict) else None
    if not (isinstance(src, dict) and all(k in src for k in _KEYS)):
        src = d if isinstance(d, dict) and all(k in d for k in _KEYS) else None
    if src is None:
        why = (d.get("chinchilla") or {}).get("skipped") if isinstance(d, dict) else None
        raise FieldError(
            "{path} has no L(N, D) = E + A/N^α + B/D^β fit (E, A, B, alpha, beta)"
            + (": {why}" if why else "")
            + "; an IsoFLOP sweep (configs/sweep-isoflop-cpu.yaml) fits one, or drop {f.fit} "
            "to use Besiroglu et al.'s law",
            path=p,
            why=why,
        )
    vals = {}
    for k in _KEYS:
        v = src[k]
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or (v <= 0 and k != "E") or v < 0:
            raise CgptError(f"{p}: chinchilla.{k} must be a positive number, got {v!r}")
        vals[k] = float(v)
    return ChinchillaLaw(**vals, source=f"{p} (approach-3 fit)")


@dataclass(frozen=True)
class InferencePlan:
    """The inference-aware choice and the compute-optimal point it is compared with."""

    flops: float  # the training budget that sets the target loss (6·N·D)
    inference_tokens: float
    loss: float  # L*, the compute-optimal loss at `flops`
    params: float  # N
    tokens: float  # D
    opt_params: float  # Chinchilla N_opt at `flops`
    opt_tokens: float
    law: ChinchillaLaw

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def train_flops(self) -> float:
        return 6 * self.params * self.tokens

    @property
    def extra_train_flops(self) -> float:
        """Training compute beyond the compute-optimal plan's (>= 0; rounding clipped)."""
        return max(0.0, self.train_flops - self.flops)

    def total_flops(self, inference_tokens: float | None = None) -> float:
        t = self.inference_tokens if inference_tokens is None else inference_tokens
        return lifetime_flops(self.params, self.tokens, t)

    @property
    def opt_total_flops(self) -> float:
        return lifetime_flops(self.opt_params, self.opt_tokens, self.inference_tokens)

    @property
    def break_even_tokens(self) -> float | None:
        """Inference tokens beyond which this (smaller) model's cheaper inference repays its
        extra training: extra training / (2·(N_opt - N)). None when N = N_opt."""
        saved = 2 * (self.opt_params - self.params)
        if saved <= self.opt_params * 1e-9:
            return None
        return self.extra_train_flops / saved

    def to_json(self) -> dict:
        return {
            "flops": self.flops,
            "inference_tokens": self.inference_tokens,
            "loss": self.loss,
            "params": self.params,
            "tokens": self.tokens,
            "tokens_per_param": self.tokens_per_param,
            "train_flops": self.train_flops,
            "extra_train_flops": self.extra_train_flops,
            "extra_train_fraction": self.extra_train_flops / self.flops,
            "inference_flops": 2 * self.params * self.inference_tokens,
            "total_flops": self.total_flops(),
            "compute_optimal": {
                "params": self.opt_params,
                "tokens": self.opt_tokens,
                "tokens_per_param": self.opt_tokens / self.opt_params,
                "total_flops": self.opt_total_flops,
            },
            "saving_fraction": 1 - self.total_flops() / self.opt_total_flops,
            "break_even_inference_tokens": self.break_even_tokens,
            "law": {k: v for k, v in asdict(self.law).items()},
            "convention": "6·N·D training, 2·N per inference token (N total parameters)",
        }


def lifetime_flops(n: float, d: float, inference_tokens: float) -> float:
    """6·N·D training + 2·N·T inference."""
    return 6 * n * d + 2 * n * inference_tokens


def stationarity(law: ChinchillaLaw, n: float, d: float, inference_tokens: float) -> float:
    """d/dN of 6·N·D(N) + 2·N·T along L(N, D(N)) = L*, divided by 6·D: zero at the optimum.

    With dD/dN = -(αA/N^(α+1)) / (βB/D^(β+1)) this is 1 - (αA/N^α)/(βB/D^β) + T/(3D)."""
    ratio = (law.alpha * law.A / n**law.alpha) / (law.beta * law.B / d**law.beta)
    return 1 - ratio + inference_tokens / (3 * d)


def flops_for_loss(law: ChinchillaLaw, loss: float) -> float:
    """The 6·N·D budget whose compute-optimal (N, D) reaches ``loss`` (geometric bisection:
    that loss falls as the budget grows)."""
    if not loss > law.E:
        raise CgptError(f"a loss of {loss:.4g} is below the law's floor E = {law.E:g}")
    lo, hi = 1.0, 1e45
    for _ in range(300):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if law.loss(*law.compute_optimal(mid)) > loss else (lo, mid)
    return math.sqrt(lo * hi)


def plan_inference(
    flops: float, inference_tokens: float, law: ChinchillaLaw = DEFAULT_LAW
) -> InferencePlan:
    """N and D minimising 6·N·D + 2·N·T subject to L(N, D) = L(N_opt, D_opt) at `flops`
    (for another target loss L*, pass ``flops_for_loss(law, L*)``)."""
    from scipy.optimize import brentq

    for what, v in (("a FLOP budget", flops), ("inference tokens", inference_tokens)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CgptError(f"{what} must be a finite number, got {v!r}")
    if flops <= 0:
        raise CgptError(f"the FLOP budget must be positive, got {flops:g}")
    if inference_tokens < 0:
        raise CgptError(f"inference tokens must be >= 0, got {inference_tokens:g}")
    n_opt, d_opt = law.compute_optimal(flops)
    target = law.loss(n_opt, d_opt)
    if inference_tokens == 0:
        return InferencePlan(flops, 0.0, target, n_opt, d_opt, n_opt, d_opt, law)
    n_min = law.min_params(target)

    def g(ln_n: float) -> float:
        n = math.exp(ln_n)
        d = law.tokens_for(n, target)
        return -1.0 if not math.isfinite(d) else stationarity(law, n, d, inference_tokens)

    # g(N_opt) = T/(3·D_opt) > 0 and g -> -inf as N -> N_min (D -> inf): a root between
    lo, hi = math.log(n_min) + 1e-9, math.log(n_opt)
    ln_n = brentq(g, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
    n = math.exp(ln_n)
    return InferencePlan(
        flops, float(inference_tokens), target, n, law.tokens_for(n, target), n_opt, d_opt, law
    )


def side_by_side(
    law: ChinchillaLaw,
    inference_tokens: float,
    aware: tuple[float, float],
    optimal: tuple[float, float],
) -> dict:
    """Two planned runs, (N, D) each (the inference-aware one and the compute-optimal one),
    by the one law ``law`` in one convention: 6·N·D training, 2·N per inference token, the
    predicted loss L(N, D), and the inference volume beyond which the first costs less."""

    def column(n: float, d: float) -> dict:
        train, serve = 6 * n * d, 2 * n * inference_tokens
        return {
            "params": n,
            "tokens": d,
            "train_flops": train,
            "inference_flops": serve,
            "total_flops": train + serve,
            "predicted_loss": law.loss(n, d),
        }

    a, o = column(*aware), column(*optimal)
    extra, saved = a["train_flops"] - o["train_flops"], 2 * (o["params"] - a["params"])
    if saved <= 0:
        break_even = None  # the inference-aware model is not smaller: it never pays back
    else:
        break_even = max(0.0, extra / saved)
    return {
        "inference_aware": a,
        "compute_optimal": o,
        "break_even_inference_tokens": break_even,
        "convention": "6·N·D training, 2·N per inference token (N total parameters)",
    }
