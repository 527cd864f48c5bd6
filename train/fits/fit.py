"""Scaling-law fits for sweeps (pure numpy/scipy; no torch).

Four fits, each written to ``fit.json`` with goodness of fit and uncertainty:

* the Cerebras-GPT paper's form over the compute-optimal frontier,
  ``L(C) = (C/a)^(-b) + c`` (docs/REFERENCE.md, Results: the paper's own
  fit is a=5.984e22, b=0.0737, c=0.5066), C = training FLOPs in the paper's algorithmic
  convention (cgpt.model.flops_per_token_algorithmic × tokens);
* Chinchilla "approach 2" for IsoFLOP sweeps (Hoffmann et al. 2022, arXiv 2203.15556): a
  parabola per budget in log-params gives N_opt and D_opt per budget, then the power laws
  N_opt ∝ C^α, D_opt ∝ C^β and the fitted tokens-per-parameter D_opt/N_opt;
* Chinchilla "approach 3", ``L(N, D) = E + A/N^α + B/D^β``
  (docs/REFERENCE.md, Related scaling laws), fitted like the paper: Huber loss on log-loss
  residuals from a grid of starts (in :mod:`cgpt.train.fits.chinchilla`, re-exported here);
* Chinchilla "approach 1", the envelope of the runs' training curves
  (:mod:`cgpt.train.fits.approach1`).

N is the TOTAL parameter count, because the planner plans tokens = tokens_per_param × params.
A fit that lacks points raises :class:`FitError` saying how many more it needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import optimize

from cgpt.train.fits.approach1 import fit_approach1
from cgpt.train.fits.chinchilla import (  # noqa: F401 - re-exported (approach 3 moved)
    HOFFMANN_GRID,
    MIN_CHINCHILLA_POINTS,
    _chin_minimize,
    _chin_objective,
    _huber,
    _one_blas_thread,
    chinchilla_loss,
    chinchilla_starts,
    chinchilla_tokens_per_param,
    fit_chinchilla,
)
from cgpt.train.fits.common import FitError, _finite, _more, _power_law, _r2
from cgpt.train.plan.rules import ScalingLaw

# the paper's law, defined once in cgpt.train.plan.rules.ScalingLaw (docs/REFERENCE.md, Results)
PAPER_LAW = {k: getattr(ScalingLaw(), k) for k in ("a", "b", "c")}
MIN_PAPER_POINTS = 3  # three parameters a, b, c
PARABOLA_WINDOW = 2  # sizes each side of the best one that the IsoFLOP parabola sees
MIN_SIZES_PER_BUDGET = 3  # a parabola has three coefficients
KEEP_DRAWS = 200  # bootstrap (a, b, c) triples kept in fit.json for `cgpt plan --fit` intervals
FLOPS_CONVENTION = "algorithmic: cgpt.model.flops_per_token_algorithmic(cfg, seq_len) x tokens"


def paper_law(flops, a: float, b: float, c: float):
    """L(C) = (C/a)^(-b) + c (the Cerebras-GPT paper's form)."""
    return (np.asarray(flops, dtype=float) / a) ** (-b) + c


# ---- the paper's law L(C) = (C/a)^-b + c ----------------------------------------------------


def _paper_model(lnc, ln_a, b, c):
    # parametrised in ln(a): a spans many decades and is strongly tied to b
    return np.exp(-b * (lnc - ln_a)) + c


def _paper_jac(lnc, ln_a, b, c):
    e = np.exp(-b * (lnc - ln_a))
    return np.stack([b * e, -(lnc - ln_a) * e, np.ones_like(lnc)], axis=1)


def _fit_paper_once(lnc: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares for (ln a, b, c): a grid over c (log-linear regression for the others),
    then a bounded local refinement. The grid makes the result independent of a start guess."""
    y_min = float(y.min())
    # every grid value of c at once: log(y - c) = icpt + slope·ln C by least squares
    cs = np.linspace(0.0, y_min, 60, endpoint=False)
    z = np.log(y[None, :] - cs[:, None])
    xc = lnc - lnc.mean()
    slopes = (z * xc).sum(axis=1) / (xc**2).sum()
    icpts = z.mean(axis=1) - slopes * lnc.mean()
    ok = slopes < 0  # loss falling with compute at this c
    if not ok.any():
        raise FitError(
            "loss does not fall with compute over these points; the power law "
            "L(C) = (C/a)^-b + c cannot describe them"
        )
    bs = -slopes[ok]
    ln_as = icpts[ok] / bs
    pred = np.exp(-bs[:, None] * (lnc[None, :] - ln_as[:, None])) + cs[ok][:, None]
    sse = ((pred - y[None, :]) ** 2).sum(axis=1)
    k = int(np.argmin(sse))
    best = (float(sse[k]), float(ln_as[k]), float(bs[k]), float(cs[ok][k]))
    _, ln_a, b, c = best
    try:
        with warnings.catch_warnings():  # the covariance is not used (bootstrap instead)
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            (ln_a, b, c), _ = optimize.curve_fit(
                _paper_model,
                lnc,
                y,
                p0=(ln_a, b, c),
                jac=_paper_jac,
                method="trf",
                maxfev=20000,
                bounds=([-np.inf, 1e-6, 0.0], [np.inf, 10.0, y_min * (1 - 1e-9)]),
            )
    except (RuntimeError, ValueError):
        pass  # keep the grid optimum
    return float(ln_a), float(b), float(c)


def fit_paper_law(
    flops: Iterable[float],
    losses: Iterable[float],
    *,
    n_boot: int = 500,
    seed: int = 0,
    predict_at: Iterable[float] = (),
    keep_draws: int = 0,
) -> dict[str, Any]:
    """Fit L(C) = (C/a)^(-b) + c; returns a, b, c, R², RMSE, residuals and a 95% interval
    per parameter from a residual bootstrap (fixed FLOPs, resampled residuals).

    ``predict_at``: compute values to predict the loss at, each with a 95% PREDICTION
    interval: the bootstrap refits' curves at C (parameter uncertainty) plus one resampled,
    dof-inflated residual each (the new point's own noise). ``keep_draws``: store up to that
    many bootstrap (a, b, c) triples as ``draws`` (cgpt plan --fit reads them)."""
    x = np.asarray(list(flops), dtype=float)
    y = np.asarray(list(losses), dtype=float)
    if len(x) < MIN_PAPER_POINTS:
        raise FitError(
            "the law L(C) = (C/a)^-b + c "
            + _more(MIN_PAPER_POINTS, len(x), "frontier points with a finite loss")
        )
    if len(set(x.tolist())) < MIN_PAPER_POINTS:
        raise FitError(
            f"the law L(C) = (C/a)^-b + c needs {MIN_PAPER_POINTS} distinct compute "
            f"values; these points have {len(set(x.tolist()))}"
        )
    lnc = np.log(x)
    ln_a, b, c = _fit_paper_once(lnc, y)
    yhat = _paper_model(lnc, ln_a, b, c)
    resid = y - yhat
    dof = len(y) - 3
    out: dict[str, Any] = {
        "form": "paper",
        "a": math.exp(ln_a),
        "b": b,
        "c": c,
        "r2": _finite(_r2(y, yhat)),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "max_abs_residual": float(np.max(np.abs(resid))),
        "residuals": [float(r) for r in resid],
        "n_points": int(len(y)),
        "dof": dof,
        "ci95": None,
    }
    targets = [float(v) for v in predict_at]
    if targets:
        out["predictions"] = [
            {"flops": t, "loss": float(_paper_model(math.log(t), ln_a, b, c)), "pi95": None}
            for t in targets
        ]
    if dof <= 0:
        out["note"] = (
            "as many parameters as points: the curve passes through every point, "
            "so R² and intervals say nothing; add points"
        )
        return out
    rng = np.random.default_rng(seed)
    scale = math.sqrt(len(y) / dof)  # residuals of a fit understate the noise
    draws = []
    for _ in range(n_boot):
        yb = yhat + rng.choice(resid, size=len(y), replace=True) * scale
        if yb.min() <= 0:
            continue
        try:
            draws.append(_fit_paper_once(lnc, yb))
        except FitError:
            continue
    if len(draws) >= 20 and targets:
        d = np.array(draws)
        for pred in out["predictions"]:
            curve = _paper_model(math.log(pred["flops"]), d[:, 0], d[:, 1], d[:, 2])
            noisy = curve + rng.choice(resid, size=len(curve), replace=True) * scale
            lo, hi = np.percentile(noisy, [2.5, 97.5])
            pred["pi95"] = [float(lo), float(hi)]
    if len(draws) >= 20 and keep_draws:
        out["draws"] = [[math.exp(la), float(bb), float(cc)] for la, bb, cc in draws[:keep_draws]]
        out["residual_scale"] = float(np.sqrt(np.mean(resid**2)) * scale)
    if len(draws) >= 20:
        d = np.array(draws)
        lo, hi = np.percentile(d, [2.5, 97.5], axis=0)
        out["ci95"] = {
            "a": [math.exp(lo[0]), math.exp(hi[0])],
            "b": [lo[1], hi[1]],
            "c": [lo[2], hi[2]],
            "n_boot": len(draws),
        }
    return out


def _holdout_one(x, y, i, n_boot: int, seed: int) -> dict[str, Any]:
    """Fit without point i, predict it: error and whether its 95% interval holds it."""
    keep = [j for j in range(len(x)) if j != i]
    fit = fit_paper_law(
        [x[j] for j in keep], [y[j] for j in keep], n_boot=n_boot, seed=seed, predict_at=[x[i]]
    )
    pred = fit["predictions"][0]
    err = pred["loss"] - y[i]
    pi = pred["pi95"]
    return {
        "flops": x[i],
        "loss": y[i],
        "predicted": pred["loss"],
        "error": err,
        "rel_error": err / y[i],
        "pi95": pi,
        "inside_pi95": None if pi is None else bool(pi[0] <= y[i] <= pi[1]),
        "fitted_on": len(keep),
        # > 1: an extrapolation that far beyond the largest fitted compute; <= 1: inside
        "extrapolation_ratio": x[i] / max(x[j] for j in keep),
    }


def prediction_check(
    flops: Iterable[float], losses: Iterable[float], *, n_boot: int = 200, seed: int = 0
) -> dict[str, Any]:
    """How well the law L(C) = (C/a)^-b + c PREDICTS, measured on the points themselves.

    * leave-largest-out: fit on every frontier point but the largest compute, predict that
      one (the question a scaling sweep answers: extrapolation to a bigger run), with a 95%
      prediction interval from the residual bootstrap (:func:`fit_paper_law`);
    * leave-one-out: the same for every point in turn (a point at either end extrapolates,
      inner points interpolate); mean absolute and RMS error, and how many fell inside their
      intervals.

    Needs one point more than the fit (4); the intervals need two more (5: a fit of 3
    parameters to 3 points has no residuals to resample).
    """
    x = [float(v) for v in flops]
    y = [float(v) for v in losses]
    need = MIN_PAPER_POINTS + 1
    if len(x) < need:
        raise FitError("a held-out prediction " + _more(need, len(x), "frontier points"))
    order = sorted(range(len(x)), key=lambda i: x[i])
    x, y = [x[i] for i in order], [y[i] for i in order]
    largest = _holdout_one(x, y, len(x) - 1, n_boot, seed)
    loo, skipped = [], []
    for i in range(len(x)):
        try:
            loo.append(_holdout_one(x, y, i, n_boot, seed) if i < len(x) - 1 else largest)
        except FitError as e:  # e.g. the rest do not fall with compute
            skipped.append({"flops": x[i], "reason": str(e)})
    errs = np.array([r["error"] for r in loo])
    inside = [r["inside_pi95"] for r in loo if r["inside_pi95"] is not None]
    return {
        "method": "paper law refitted without the held-out point(s); 95% prediction "
        "intervals from a residual bootstrap plus a resampled residual",
        "leave_largest_out": largest,
        "leave_one_out": {
            "points": loo,
            "skipped": skipped,
            "mean_abs_error": float(np.mean(np.abs(errs))) if len(errs) else None,
            "rmse": float(np.sqrt(np.mean(errs**2))) if len(errs) else None,
            "max_abs_rel_error": (float(max(abs(r["rel_error"]) for r in loo)) if loo else None),
            "inside_pi95": f"{sum(inside)}/{len(inside)}" if inside else None,
        },
    }


def predict_targets(
    flops: Iterable[float],
    losses: Iterable[float],
    targets: list[dict],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Held-out targets (records with name, flops, loss) predicted by the law fitted on
    (flops, losses): predicted, 95% interval, measured, error, and the extrapolation ratio
    (the target's compute / the largest fitted compute)."""
    x, y = [float(v) for v in flops], [float(v) for v in losses]
    fit = fit_paper_law(x, y, n_boot=n_boot, seed=seed, predict_at=[t["flops"] for t in targets])
    out = []
    for t, pred in zip(targets, fit["predictions"]):
        pi, loss = pred["pi95"], float(t["loss"])
        out.append(
            {
                "name": t["name"],
                "flops": float(t["flops"]),
                "loss": loss,
                "predicted": pred["loss"],
                "error": pred["loss"] - loss,
                "rel_error": (pred["loss"] - loss) / loss,
                "pi95": pi,
                "inside_pi95": None if pi is None else bool(pi[0] <= loss <= pi[1]),
                "fitted_on": len(x),
                "extrapolation_ratio": float(t["flops"]) / max(x),
            }
        )
    return out


def monotonic_report(flops: list[float], losses: list[float]) -> dict[str, Any]:
    """Does loss fall strictly as compute grows? Lists the pairs that break it."""
    order = np.argsort(flops)
    f = [float(flops[i]) for i in order]
    y = [float(losses[i]) for i in order]
    breaks = [
        {"flops": [f[i], f[i + 1]], "loss": [y[i], y[i + 1]]}
        for i in range(len(y) - 1)
        if not y[i + 1] < y[i]
    ]
    return {"monotonic": not breaks, "violations": breaks}


# ---- Chinchilla approach 2: IsoFLOP parabolas ----------------------------------------------


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
        raise FitError("its parabola " + _more(MIN_SIZES_PER_BUDGET, n, "model sizes"))
    order = np.argsort(params, kind="stable")
    lx, ld = np.log10(params)[order], np.log10(tokens)[order]
    y = np.asarray(losses, dtype=float)[order]
    best = int(np.argmin(y))
    lo, hi = max(0, best - window), min(len(y), best + window + 1)
    if len(set(lx[lo:hi])) >= MIN_SIZES_PER_BUDGET:
        lx, ld, y = lx[lo:hi], ld[lo:hi], y[lo:hi]
    coef = np.polyfit(lx, y, 2)
    out = {
        "parabola": [float(v) for v in coef],
        "r2": _finite(_r2(y, np.polyval(coef, lx))),
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
            + _more(2, len(budgets), "budgets with a fitted optimum")
            + ("; " + "; ".join(s["reason"] for s in skipped) if skipped else "")
        )
    cs = np.array([b["budget"] for b in budgets])
    n_law = _power_law(cs, np.array([b["n_opt"] for b in budgets]))
    d_law = _power_law(cs, np.array([b["d_opt"] for b in budgets]))
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


# ---- putting it together ----------------------------------------------------------------------


def usable_points(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split result records into fit-able points and excluded ones (with reasons)."""
    keep, excluded = [], []
    for r in records:
        loss = r.get("val_loss")
        if r.get("status") != "ok":
            excluded.append(
                {
                    "name": r.get("name"),
                    "reason": f"status {r.get('status')}: {r.get('reason', 'no reason recorded')}",
                }
            )
        elif loss is None or not math.isfinite(float(loss)):
            excluded.append({"name": r.get("name"), "reason": f"val_loss is {loss}"})
        else:
            keep.append({**r, "loss": float(loss)})
    return keep, excluded


def _isoflop_frontier(groups: dict[float, list[dict]], fitted: list[dict]) -> list[dict]:
    """Per budget: the parabola's optimum when it lies inside the sizes tried, else the best
    measured point (so a budget whose optimum was not bracketed still counts, honestly)."""
    opt = {b["budget"]: b for b in fitted if b["bracketed"]}
    frontier = []
    for c, pts in sorted(groups.items()):
        if c in opt:
            frontier.append(
                {
                    "name": f"budget {c:.3g} (parabola optimum)",
                    "flops": c,
                    "loss": opt[c]["loss_opt"],
                }
            )
        else:
            best = min(pts, key=lambda p: p["loss"])
            frontier.append(
                {
                    "name": f"budget {c:.3g} (best measured: {best.get('name')})",
                    "flops": c,
                    "loss": best["loss"],
                }
            )
    return frontier


def fit_results(
    records: list[dict],
    *,
    kind: str,
    tokens_per_param: float | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """All fits for one sweep's result records -> the fit.json dict.

    ``kind`` is "tokens_per_param" (every point at one ratio, the Cerebras way: every point
    is on the frontier) or "isoflop" (the frontier is the per-budget optimum). The top-level
    ``tokens_per_param`` and ``loss_law`` are what ``cgpt plan --fit`` reads. Approach 3
    (``chinchilla``) and approach 1 (``approach1``, from the runs' metrics files named by
    ``run_dir``) are reported beside them; one that cannot be made is ``{"skipped": why}``.
    """
    points, excluded = usable_points(records)
    out: dict[str, Any] = {
        "version": 1,
        "kind": kind,
        "flops_convention": FLOPS_CONVENTION,
        "excluded": excluded,
        "warnings": [],
        "tokens_per_param": None,
        "tokens_per_param_source": None,
        "loss_law": None,
    }
    if excluded:
        out["warnings"].append(
            "excluded from the fits: " + "; ".join(f"{e['name']} ({e['reason']})" for e in excluded)
        )
    frontier = []
    if kind == "isoflop":
        groups: dict[float, list[dict]] = {}
        for p in points:
            groups.setdefault(float(p["budget"]), []).append(p)
        try:
            iso = fit_isoflop(groups)
            out["isoflop"] = iso
            out["warnings"] += iso["warnings"] + [s["reason"] for s in iso["skipped"]]
            out["tokens_per_param"] = iso["tokens_per_param"]
            out["tokens_per_param_source"] = "measured: IsoFLOP optima (Chinchilla approach 2)"
        except FitError as e:
            out["isoflop"] = iso = {"error": str(e), "budgets": []}
            out["warnings"].append(f"IsoFLOP: {e}")
        frontier = _isoflop_frontier(groups, iso["budgets"])
    else:
        frontier = [
            {"name": p["name"], "flops": float(p["flops"]), "loss": p["loss"]} for p in points
        ]
        out["tokens_per_param"] = tokens_per_param
        out["tokens_per_param_source"] = "assumed: the sweep's fixed ratio (not measured)"
    frontier.sort(key=lambda f: f["flops"])
    fx, fy = [f["flops"] for f in frontier], [f["loss"] for f in frontier]
    try:
        law = fit_paper_law(fx, fy, n_boot=n_boot, seed=seed, keep_draws=KEEP_DRAWS)
        law["frontier"] = frontier
        law.update(monotonic_report(fx, fy))
        out["loss_law"] = law
    except FitError as e:
        out["loss_law_error"] = str(e)
    try:
        out["prediction"] = prediction_check(fx, fy, n_boot=min(n_boot, 200), seed=seed)
        llo = out["prediction"]["leave_largest_out"]
        if llo["inside_pi95"] is False:
            out["warnings"].append(
                f"leave-largest-out: the law fitted without the largest point predicts "
                f"{llo['predicted']:.4f} for it, measured {llo['loss']:.4f}, outside its 95% "
                "interval: extrapolations from this sweep are not trustworthy"
            )
    except FitError as e:
        out["prediction"] = {"skipped": str(e)}
    try:
        ch = fit_chinchilla(
            [p["params"] for p in points],
            [p["tokens"] for p in points],
            [p["loss"] for p in points],
            seed=seed,
        )
        mid = float(np.exp(np.mean(np.log([p["flops"] for p in points]))))
        ch["tokens_per_param_at"] = {
            "flops": mid,
            "tokens_per_param": chinchilla_tokens_per_param(ch, mid),
        }
        out["chinchilla"] = ch
    except FitError as e:
        out["chinchilla"] = {"skipped": str(e)}
    try:
        a1 = fit_approach1(points, seed=seed)
        out["approach1"] = a1
        out["warnings"] += a1["warnings"] + [
            f"approach 1 left out {e['name']}: {e['reason']}" for e in a1["excluded"]
        ]
    except FitError as e:
        out["approach1"] = {"skipped": str(e)}
    return out
