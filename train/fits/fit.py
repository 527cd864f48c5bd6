"""All fits of one sweep's result records -> the fit.json dict, and the Cerebras-GPT paper's
loss law ``L(C) = (C/a)^(-b) + c`` over the compute-optimal frontier with its held-out
checks (leave-largest-out, leave-one-out, held-out targets). The fits and why:
docs/SCALING.md, The fits. Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import optimize

from cgpt.train.fits.approach1 import fit_approach1
from cgpt.train.fits.chinchilla import chinchilla_tokens_per_param, fit_chinchilla
from cgpt.train.fits.common import FitError, finite, more, r2
from cgpt.train.fits.isoflop import fit_isoflop
from cgpt.train.plan.rules import ScalingLaw

# the paper's law, defined once in cgpt.train.plan.rules.ScalingLaw (docs/REFERENCE.md, Results)
PAPER_LAW = {k: getattr(ScalingLaw(), k) for k in ("a", "b", "c")}
MIN_PAPER_POINTS = 3  # three parameters a, b, c
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


def _power_model(lnc, ln_a, b):
    return np.exp(-b * (lnc - ln_a))


def _power_jac(lnc, ln_a, b):
    return _paper_jac(lnc, ln_a, b, 0.0)[:, :2]


def _fit_paper_once(
    lnc: np.ndarray, y: np.ndarray, floor: bool = True
) -> tuple[float, float, float]:
    """Least squares for (ln a, b, c): a grid over c (log-linear regression for the others),
    then a bounded local refinement. The grid makes the result independent of a start guess.
    ``floor=False``: c is fixed at 0 (the pure power law (C/a)^-b)."""
    y_min = float(y.min())
    # every grid value of c at once: log(y - c) = icpt + slope·ln C by least squares
    cs = np.linspace(0.0, y_min, 60, endpoint=False) if floor else np.zeros(1)
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
            if not floor:
                (ln_a, b), _ = optimize.curve_fit(
                    _power_model,
                    lnc,
                    y,
                    p0=(ln_a, b),
                    jac=_power_jac,
                    method="trf",
                    maxfev=20000,
                    bounds=([-np.inf, 1e-6], [np.inf, 10.0]),
                )
                return float(ln_a), float(b), 0.0
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


def _check_paper_points(x: np.ndarray) -> None:
    if len(x) < MIN_PAPER_POINTS:
        raise FitError(
            "the law L(C) = (C/a)^-b + c "
            + more(MIN_PAPER_POINTS, len(x), "frontier points with a finite loss")
        )
    if len(set(x.tolist())) < MIN_PAPER_POINTS:
        raise FitError(
            f"the law L(C) = (C/a)^-b + c needs {MIN_PAPER_POINTS} distinct compute "
            f"values; these points have {len(set(x.tolist()))}"
        )


def _floor(sd: float, resid, scale: float) -> float:
    """``sd`` (noise measured apart from the fit: seed replicates) where it exceeds the
    dof-inflated residuals' RMS, else 0: the residuals then stand."""
    return sd if sd > float(np.sqrt(np.mean(resid**2))) * scale else 0.0


def _noise(rng, resid, scale: float, sd: float, n: int):
    """``n`` draws of a point's noise: a normal of sd ``sd`` (a :func:`_floor`), else
    resampled, dof-inflated residuals."""
    if sd:
        return rng.normal(0.0, sd, size=n)
    return rng.choice(resid, size=n, replace=True) * scale


def _paper_draws(lnc, yhat, resid, scale: float, n_boot: int, rng, floor: bool, sd=0.0) -> list:
    """Residual bootstrap: refits of (ln a, b, c) to the fitted curve plus resampled,
    dof-inflated residuals, or normal draws of sd ``sd`` (a :func:`_floor`); draws with a
    non-positive loss or no fit are skipped."""
    draws = []
    for _ in range(n_boot):
        yb = yhat + _noise(rng, resid, scale, sd, len(yhat))
        if yb.min() <= 0:
            continue
        try:
            draws.append(_fit_paper_once(lnc, yb, floor))
        except FitError:
            continue
    return draws


def _paper_intervals(
    out: dict[str, Any], draws: list, resid, scale: float, rng, keep_draws: int, new_sd=()
) -> None:
    """With 20 or more draws: the predictions' 95% prediction intervals (each new point's
    noise at least its relative sd in ``new_sd``), up to ``keep_draws`` stored draws and the
    parameters' 95% intervals, into ``out``."""
    if len(draws) < 20:
        return
    d = np.array(draws)
    preds = out.get("predictions", [])
    for pred, rel in zip(preds, list(new_sd) or [0.0] * len(preds), strict=True):
        curve = _paper_model(math.log(pred["flops"]), d[:, 0], d[:, 1], d[:, 2])
        sd = _floor(rel * pred["loss"], resid, scale)
        noisy = curve + _noise(rng, resid, scale, sd, len(curve))
        lo, hi = np.percentile(noisy, [2.5, 97.5])
        pred["pi95"] = [float(lo), float(hi)]
    if keep_draws:
        out["draws"] = [[math.exp(la), float(bb), float(cc)] for la, bb, cc in draws[:keep_draws]]
        out["residual_scale"] = float(np.sqrt(np.mean(resid**2)) * scale)
    lo, hi = np.percentile(d, [2.5, 97.5], axis=0)
    out["ci95"] = {
        "a": [math.exp(lo[0]), math.exp(hi[0])],
        "b": [lo[1], hi[1]],
        "c": [lo[2], hi[2]],
        "n_boot": len(draws),
    }


def fit_paper_law(
    flops: Iterable[float],
    losses: Iterable[float],
    *,
    n_boot: int = 500,
    seed: int = 0,
    predict_at: Iterable[float] = (),
    keep_draws: int = 0,
    floor: bool = True,
    noise: float = 0.0,
    new_noise: Iterable[float] = (),
) -> dict[str, Any]:
    """Fit L(C) = (C/a)^(-b) + c; returns a, b, c, R², RMSE, residuals and a 95% interval
    per parameter from a residual bootstrap (fixed FLOPs, resampled residuals).
    ``noise``: the relative sd of a fitted point's loss measured apart from the fit (seed
    replicates), a floor under the resampled residuals; ``new_noise``: the same for each
    ``predict_at`` point's own noise (few points' residuals can understate both).

    ``predict_at``: compute values to predict the loss at, each with a 95% PREDICTION
    interval: the bootstrap refits' curves at C (parameter uncertainty) plus one resampled,
    dof-inflated residual each (the new point's own noise). ``keep_draws``: store up to that
    many bootstrap (a, b, c) triples as ``draws`` (cgpt plan --fit reads them).
    ``floor=False``: c is fixed at 0, a pure power law with two parameters (the sweep's
    ``loss_law: power``, for ladders whose floor the data cannot identify)."""
    x = np.asarray(list(flops), dtype=float)
    y = np.asarray(list(losses), dtype=float)
    _check_paper_points(x)
    lnc = np.log(x)
    ln_a, b, c = _fit_paper_once(lnc, y, floor)
    yhat = _paper_model(lnc, ln_a, b, c)
    resid = y - yhat
    dof = len(y) - (3 if floor else 2)
    out: dict[str, Any] = {
        "form": "paper" if floor else "power",
        "a": math.exp(ln_a),
        "b": b,
        "c": c,
        "r2": finite(r2(y, yhat)),
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
    sd = _floor(noise * float(y.mean()), resid, scale)
    draws = _paper_draws(lnc, yhat, resid, scale, n_boot, rng, floor, sd)
    _paper_intervals(out, draws, resid, scale, rng, keep_draws, new_noise)
    return out


def _holdout_one(x, y, i, n_boot: int, seed: int, floor: bool) -> dict[str, Any]:
    """Fit without point i, predict it: error and whether its 95% interval holds it."""
    keep = [j for j in range(len(x)) if j != i]
    fit = fit_paper_law(
        [x[j] for j in keep],
        [y[j] for j in keep],
        n_boot=n_boot,
        seed=seed,
        predict_at=[x[i]],
        floor=floor,
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
    flops: Iterable[float],
    losses: Iterable[float],
    *,
    n_boot: int = 200,
    seed: int = 0,
    floor: bool = True,
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
        raise FitError("a held-out prediction " + more(need, len(x), "frontier points"))
    order = sorted(range(len(x)), key=lambda i: x[i])
    x, y = [x[i] for i in order], [y[i] for i in order]
    largest = _holdout_one(x, y, len(x) - 1, n_boot, seed, floor)
    loo, skipped = [], []
    for i in range(len(x)):
        try:
            loo.append(_holdout_one(x, y, i, n_boot, seed, floor) if i < len(x) - 1 else largest)
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
    floor: bool = True,
    noise: float = 0.0,
) -> list[dict[str, Any]]:
    """Held-out targets (dicts with name, flops and loss: the measured loss, or None for a
    target not trained yet; optional rel_sd, its own noise) predicted by the law fitted on
    (flops, losses): predicted, 95% interval, the extrapolation ratio (the target's compute /
    the largest fitted compute) and, when measured, the error and whether the interval holds
    it. ``noise``: as for :func:`fit_paper_law`."""
    x, y = [float(v) for v in flops], [float(v) for v in losses]
    at, new = [t["flops"] for t in targets], [t.get("rel_sd") or 0.0 for t in targets]
    fit = fit_paper_law(
        x, y, n_boot=n_boot, seed=seed, predict_at=at, floor=floor, noise=noise, new_noise=new
    )
    out = []
    for t, pred in zip(targets, fit["predictions"]):
        pi, loss = pred["pi95"], t["loss"]
        err = None if loss is None else pred["loss"] - float(loss)
        out.append(
            {
                "name": t["name"],
                "flops": float(t["flops"]),
                "loss": None if loss is None else float(loss),
                "predicted": pred["loss"],
                "error": err,
                "rel_error": None if err is None else err / float(loss),
                "pi95": pi,
                "inside_pi95": None if pi is None or loss is None else bool(pi[0] <= loss <= pi[1]),
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


def _frontier(
    points: list[dict], kind: str, tokens_per_param: float | None, out: dict[str, Any]
) -> list[dict]:
    """The compute-optimal frontier the loss law is fitted on, sorted by compute; for
    "isoflop" also the approach-2 fit and its tokens per parameter, into ``out``."""
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
    return frontier


def _fit_frontier(
    out: dict[str, Any], frontier: list[dict], n_boot: int, seed: int, floor: bool
) -> None:
    """The loss law over the frontier and its held-out checks, into ``out``."""
    fx, fy = [f["flops"] for f in frontier], [f["loss"] for f in frontier]
    try:
        law = fit_paper_law(fx, fy, n_boot=n_boot, seed=seed, keep_draws=KEEP_DRAWS, floor=floor)
        law["frontier"] = frontier
        law.update(monotonic_report(fx, fy))
        out["loss_law"] = law
    except FitError as e:
        out["loss_law_error"] = str(e)
    try:
        out["prediction"] = prediction_check(
            fx, fy, n_boot=min(n_boot, 200), seed=seed, floor=floor
        )
        llo = out["prediction"]["leave_largest_out"]
        if llo["inside_pi95"] is False:
            out["warnings"].append(
                f"leave-largest-out: the law fitted without the largest point predicts "
                f"{llo['predicted']:.4f} for it, measured {llo['loss']:.4f}, outside its 95% "
                "interval: extrapolations from this sweep are not trustworthy"
            )
    except FitError as e:
        out["prediction"] = {"skipped": str(e)}


def _chinchilla(points: list[dict], seed: int) -> dict[str, Any]:
    """Approach 3 over every point, with its tokens per parameter at their mean compute."""
    try:
        ch = fit_chinchilla(
            [p["params"] for p in points],
            [p["tokens"] for p in points],
            [p["loss"] for p in points],
            seed=seed,
        )
    except FitError as e:
        return {"skipped": str(e)}
    mid = float(np.exp(np.mean(np.log([p["flops"] for p in points]))))
    ch["tokens_per_param_at"] = {
        "flops": mid,
        "tokens_per_param": chinchilla_tokens_per_param(ch, mid),
    }
    return ch


def fit_results(
    records: list[dict],
    *,
    kind: str,
    tokens_per_param: float | None = None,
    n_boot: int = 500,
    seed: int = 0,
    floor: bool = True,
) -> dict[str, Any]:
    """All fits for one sweep's result records -> the fit.json dict.

    ``kind`` is "tokens_per_param" (every point at one ratio, the Cerebras way: every point
    is on the frontier) or "isoflop" (the frontier is the per-budget optimum). The top-level
    ``tokens_per_param`` and ``loss_law`` are what ``cgpt plan --fit`` reads. Approach 3
    (``chinchilla``) and approach 1 (``approach1``, from the runs' metrics files named by
    ``run_dir``) are reported beside them; one that cannot be made is ``{"skipped": why}``.
    ``floor=False``: the loss law is the pure power law (c = 0; the sweep's loss_law: power).
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
    _fit_frontier(out, _frontier(points, kind, tokens_per_param, out), n_boot, seed, floor)
    out["chinchilla"] = _chinchilla(points, seed)
    try:
        a1 = fit_approach1(points, seed=seed)
        out["approach1"] = a1
        out["warnings"] += a1["warnings"] + [
            f"approach 1 left out {e['name']}: {e['reason']}" for e in a1["excluded"]
        ]
    except FitError as e:
        out["approach1"] = {"skipped": str(e)}
    return out
