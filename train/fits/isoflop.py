"""Chinchilla "approach 2" for IsoFLOP sweeps (Hoffmann et al. 2022, arXiv 2203.15556): a
parabola per budget in log-params gives N_opt and D_opt per budget, then the power laws
N_opt ∝ C^α, D_opt ∝ C^β and the tokens per parameter D_opt/N_opt, with bootstrap intervals.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cgpt.train.fits.common import FitError, finite, more, power_law, r2

PARABOLA_WINDOW = 2  # sizes each side of the best one that the IsoFLOP parabola sees
MIN_SIZES_PER_BUDGET = 3  # a parabola has three coefficients


def fit_isoflop_budget(
    params: list[float], tokens: list[float], losses: list[float], window: int = PARABOLA_WINDOW
) -> dict:
    """Parabola of loss in log10(params) for one budget; optimum N, D and loss there.

    The parabola is fitted to the best measured size and its ``window`` neighbours on each
    side (in size order): the loss is not symmetric in log N, and far sizes pull a global
    parabola's vertex away from the minimum (measured: a 6-size budget whose best size was
    the second smallest got its vertex below the smallest size; ±2 kept it at the minimum).
    """
    n = len(set(params))
    if n < MIN_SIZES_PER_BUDGET:
        raise FitError("its parabola " + more(MIN_SIZES_PER_BUDGET, n, "model sizes"))
    order = np.argsort(params, kind="stable")
    lx, ld = np.log10(params)[order], np.log10(tokens)[order]
    y = np.asarray(losses, dtype=float)[order]
    best = int(np.argmin(y))
    lo, hi = max(0, best - window), min(len(y), best + window + 1)
    if len(set(lx[lo:hi])) >= MIN_SIZES_PER_BUDGET:
        lx, ld, y = lx[lo:hi], ld[lo:hi], y[lo:hi]
    coef = np.polyfit(lx, y, 2)
    out: dict[str, Any] = {
        "parabola": [float(v) for v in coef],
        "r2": finite(r2(y, np.polyval(coef, lx))),
        "n_points": len(y),
    }
    if coef[0] <= 0:
        raise FitError(
            "its losses do not curve upward in log-params (no interior minimum); "
            "add smaller and larger sizes around the best one"
        )
    x_opt = -coef[1] / (2 * coef[0])
    # tokens at the optimum: log D is close to linear in log N at fixed compute
    d_line = np.polyfit(lx, ld, 1)
    out.update(
        n_opt=float(10**x_opt),
        d_opt=float(10 ** np.polyval(d_line, x_opt)),
        loss_opt=float(np.polyval(coef, x_opt)),
        bracketed=bool(lx.min() <= x_opt <= lx.max()),
    )
    out["tokens_per_param"] = out["d_opt"] / out["n_opt"]
    # kept for the bootstrap of fit_isoflop (not written to fit.json)
    out["_points"] = (lx, y, np.polyval(coef, lx), d_line)
    return out


ISOFLOP_DRAWS = 1000  # bootstrap draws for the tokens/param and exponent intervals


def _interval(draws: list[float], dropped: int, need: int) -> dict[str, Any]:
    if len(draws) < need:
        return {"interval": None, "draws": len(draws), "dropped": dropped}
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"interval": [float(lo), float(hi)], "draws": len(draws), "dropped": dropped}


def _isoflop_intervals(budgets: list[dict], seed: int = 0) -> dict[str, dict[str, Any]]:
    """95% intervals of the IsoFLOP tokens/param (the geometric mean over budgets) and of
    the exponents α (N_opt ∝ C^α) and β (D_opt ∝ C^β).

    Each draw resamples the budgets (with replacement) and, inside each, the residuals of
    its parabola (a parabola through exactly 3 sizes has none, so only the budget
    resampling moves it), refits the parabolas, takes the geometric mean of D/N at their
    vertices and refits the two power laws through the vertices. Draws whose parabola stops
    curving upward are dropped and counted; a draw that picked one budget only has no slope
    (counted in the exponents' ``dropped``).
    """
    rng = np.random.default_rng(seed)
    k, tpp, alphas, betas = len(budgets), [], [], []
    dropped = one_budget = 0
    for _ in range(ISOFLOP_DRAWS):
        idx = rng.integers(0, k, k)
        vertices = []  # (log10 C, log10 N_opt, log10 D_opt)
        for i in idx:
            lx, y, fitted, d_line = budgets[i]["_points"]
            resid = y - fitted
            y_star = fitted + rng.choice(resid, len(resid), replace=True)
            coef = np.polyfit(lx, y_star, 2)
            if coef[0] <= 0:
                break
            x_opt = -coef[1] / (2 * coef[0])
            vertices.append((math.log10(budgets[i]["budget"]), x_opt, np.polyval(d_line, x_opt)))
        if len(vertices) < k:
            dropped += 1
            continue
        lc, ln, ld = (np.array(v, dtype=float) for v in zip(*vertices))
        tpp.append(float(10 ** np.mean(ld - ln)))  # geometric mean of D/N
        if len(set(idx.tolist())) < 2:
            one_budget += 1
            continue
        alphas.append(float(np.polyfit(lc, ln, 1)[0]))
        betas.append(float(np.polyfit(lc, ld, 1)[0]))
    need = ISOFLOP_DRAWS // 2
    return {
        "tokens_per_param": _interval(tpp, dropped, need),
        "alpha": _interval(alphas, dropped + one_budget, need),
        "beta": _interval(betas, dropped + one_budget, need),
    }


def fit_isoflop(groups: dict[float, list[dict]]) -> dict[str, Any]:
    """Approach 2 over budgets {C: [point, ...]} (points have params, tokens, loss)."""
    budgets: list[dict] = []
    skipped: list[dict] = []
    for c in sorted(groups):
        pts = groups[c]
        try:
            fit = fit_isoflop_budget(
                [p["params"] for p in pts], [p["tokens"] for p in pts], [p["loss"] for p in pts]
            )
        except FitError as e:
            skipped.append({"budget": c, "reason": f"budget {c:.3g}: {e}"})
            continue
        budgets.append({"budget": c, **fit})
    out: dict[str, Any] = {"budgets": budgets, "skipped": skipped, "warnings": []}
    for b in budgets:
        if not b["bracketed"]:
            out["warnings"].append(
                f"budget {b['budget']:.3g}: the optimum lies outside the "
                "sizes tried (extrapolated); add sizes on that side"
            )
    if len(budgets) < 2:
        raise FitError(
            "the IsoFLOP power laws "
            + more(2, len(budgets), "budgets with a fitted optimum")
            + ("; " + "; ".join(s["reason"] for s in skipped) if skipped else "")
        )
    cs = np.array([b["budget"] for b in budgets])
    n_law = power_law(cs, np.array([b["n_opt"] for b in budgets]))
    d_law = power_law(cs, np.array([b["d_opt"] for b in budgets]))
    tpp = np.array([b["tokens_per_param"] for b in budgets])
    ci = _isoflop_intervals(budgets)
    out.update(
        alpha=n_law["exponent"],
        beta=d_law["exponent"],
        alpha_ci95=ci["alpha"],
        beta_ci95=ci["beta"],
        n_opt_law=n_law,
        d_opt_law=d_law,
        # the planner takes one number: the geometric mean over the budgets measured; the
        # trend D/N ∝ C^(β-α) is recorded beside it for extrapolation
        tokens_per_param=float(np.exp(np.mean(np.log(tpp)))),
        tokens_per_param_range=[float(tpp.min()), float(tpp.max())],
        tokens_per_param_ci95=ci["tokens_per_param"],
        tokens_per_param_law={
            "coefficient": d_law["coefficient"] / n_law["coefficient"],
            "exponent": d_law["exponent"] - n_law["exponent"],
        },
    )
    for b in budgets:
        b.pop("_points", None)
    return out
