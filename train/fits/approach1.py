"""Chinchilla "approach 1" (Hoffmann et al. 2022, arXiv 2203.15556, §3.1): the envelope of
the runs' loss-against-compute curves gives N_opt(C) and D_opt(C), fitted as power laws with
bootstrap intervals over runs. Which points, the smoothing and the grid: docs/SCALING.md,
Approach 1. The runs are read by cgpt.train.fits.curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cgpt.train.fits.common import FitError, more, power_law
from cgpt.train.fits.curves import SMOOTH_HALF_WINDOW, Run, read_runs

Points = Literal["auto", "final", "curve"]

MIN_SIZES = 3  # a power law through the envelope needs 3 distinct sizes on it
GRID_POINTS = 200
KEEP_CURVE_POINTS = 60  # points of each smoothed curve kept in fit.json (envelope.png)
DRAWS = 1000  # bootstrap draws

CAVEAT = {
    "curve": (
        "the envelope uses points inside runs: a run whose LR had not finished decaying "
        "reads a HIGHER loss there than a dedicated run of that length reaches (Hoffmann et "
        "al. trained each size with several cosine lengths for this reason), so the larger "
        "runs' early points are penalised and N_opt leans towards the sizes whose runs end "
        "at that compute; trust it where the envelope follows the runs' final points, and "
        "prefer points='final' with IsoFLOP sweeps or WSD cooldown branches"
    ),
    "final": (
        "only completed runs' final val losses (and WSD cooldown branches, which equal "
        "dedicated runs of their lengths): each size's curve is interpolated linearly in "
        "ln C between its completed lengths, so its shape between them is assumed, not "
        "measured"
    ),
}


def _choose(runs: list[Run]) -> str:
    """Points to use with "auto": "final" when >= MIN_SIZES sizes have completed runs at
    >= 2 compute values, else "curve"."""
    lengths: dict[float, set[float]] = {}
    for r in runs:
        lengths.setdefault(r.params, set()).add(r.final_flops)
    return "final" if sum(len(v) >= 2 for v in lengths.values()) >= MIN_SIZES else "curve"


# ---- the envelope ----------------------------------------------------------------------------


def _size_curves(runs: list[Run]) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
    """points="final": one curve per size through its runs' final points,
    as (params, flops_per_token, ln C, loss); the lowest loss where two share a C."""
    by_size: dict[float, dict[float, Run]] = {}
    for r in runs:
        pts = by_size.setdefault(r.params, {})
        if r.final_flops not in pts or r.final_loss < pts[r.final_flops].final_loss:
            pts[r.final_flops] = r
    out = []
    for n, pts in by_size.items():
        cs = sorted(pts)
        fpt = float(np.exp(np.mean(np.log([pts[c].flops_per_token for c in cs]))))
        out.append((n, fpt, np.log(cs), np.array([pts[c].final_loss for c in cs])))
    return out


def _on_grid(ln_c: np.ndarray, loss: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The curve's loss at the grid's ln C, NaN outside its span (no extrapolation; a
    one-point curve only where the grid hits it)."""
    v = np.interp(grid, ln_c, loss)
    v[(grid < ln_c[0] - 1e-9) | (grid > ln_c[-1] + 1e-9)] = np.nan
    return v


def _grid(runs: list[Run], n: int = GRID_POINTS) -> np.ndarray:
    ends = np.log([r.final_flops for r in runs])
    return np.linspace(ends.min(), ends.max(), n)


@dataclass
class _Curves:
    """Curves on a grid of ln C: one row per curve."""

    params: np.ndarray
    fpt: np.ndarray
    values: np.ndarray  # (curves, grid)
    names: list[str]


def _curves(runs: list[Run], points: str, grid: np.ndarray) -> _Curves:
    if points == "curve":
        rows = []
        for r in runs:
            assert r.ln_flops is not None and r.loss is not None, "read with points='curve'"
            rows.append((r.params, r.flops_per_token, r.ln_flops, r.loss, r.name))
    else:
        rows = [(n, f, lc, lo, f"N={n:.4g}") for n, f, lc, lo in _size_curves(runs)]
    return _Curves(
        np.array([r[0] for r in rows], dtype=float),
        np.array([r[1] for r in rows], dtype=float),
        np.array([_on_grid(lc, lo, grid) for _, _, lc, lo, _ in rows]),
        [r[4] for r in rows],
    )


def _envelope(cv: _Curves, grid: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Per grid column in ``keep`` where curves of >= 2 sizes are present: the winning
    curve (index), its size, tokens and loss, and whether it is the smallest or largest
    size present."""
    present = np.isfinite(cv.values)
    sizes, row_size = np.unique(cv.params, return_inverse=True)
    size_present = np.zeros((len(sizes), present.shape[1]), dtype=bool)
    np.logical_or.at(size_present, row_size, present)
    cols = keep & (size_present.sum(axis=0) >= 2)
    v = np.where(present, cv.values, np.inf)[:, cols]
    w = np.argmin(v, axis=0)
    p = cv.params[:, None]
    smallest = np.where(present, p, np.inf)[:, cols].min(axis=0)
    largest = np.where(present, p, -np.inf)[:, cols].max(axis=0)
    n = cv.params[w]
    c = np.exp(grid[cols])
    return {
        "flops": c,
        "loss": v[w, np.arange(len(w))],
        "params": n,
        "tokens": c / cv.fpt[w],
        "winner": w,
        "edge": (n == smallest) | (n == largest),
    }


def _span(runs: list[Run], grid: np.ndarray) -> np.ndarray:
    ends = np.log([r.final_flops for r in runs])
    return (grid >= ends.min() - 1e-9) & (grid <= ends.max() + 1e-9)


def envelope(runs: list[Run], points: str) -> list[dict]:
    """The envelope over ``runs`` (docs/SCALING.md, Approach 1), one dict per grid value."""
    grid = _grid(runs)
    cv = _curves(runs, points, grid)
    env = _envelope(cv, grid, _span(runs, grid))
    return [
        {
            "flops": float(env["flops"][i]),
            "loss": float(env["loss"][i]),
            "params": float(env["params"][i]),
            "tokens": float(env["tokens"][i]),
            "run": cv.names[int(env["winner"][i])],
            "edge": bool(env["edge"][i]),
        }
        for i in range(len(env["flops"]))
    ]


def _laws(c: np.ndarray, n: np.ndarray, d: np.ndarray) -> tuple[dict, dict]:
    sizes = len(set(n.tolist()))
    if sizes < MIN_SIZES:
        raise FitError(
            "approach 1: the envelope "
            + more(MIN_SIZES, sizes, "distinct model sizes on it")
            + " (sizes between and beyond the ones that win, or longer runs, put more on it)"
        )
    return power_law(c, n), power_law(c, d)


def _tpp(n_law: dict, d_law: dict, flops: float) -> float:
    return float(
        d_law["coefficient"]
        / n_law["coefficient"]
        * flops ** (d_law["exponent"] - n_law["exponent"])
    )


def _bootstrap(runs: list[Run], points: str, median: float, seed: int) -> dict[str, Any]:
    """Runs resampled with replacement; curves, grid span, envelope and laws rebuilt per
    draw. Draws with fewer than MIN_SIZES sizes on their envelope are dropped and counted."""
    rng = np.random.default_rng(seed)
    grid = _grid(runs)  # each draw uses the part of it that its own runs span
    cached = _curves(runs, points, grid) if points == "curve" else None  # one row per run
    a, b, tpp, dropped = [], [], [], 0
    for _ in range(DRAWS):
        idx = rng.integers(0, len(runs), len(runs))
        sample = [runs[i] for i in idx]
        if cached is not None:
            u = np.unique(idx)  # a run drawn twice is the same curve
            cv = _Curves(cached.params[u], cached.fpt[u], cached.values[u], [])
        else:
            cv = _curves(sample, points, grid)
        env = _envelope(cv, grid, _span(sample, grid))
        try:
            n_law, d_law = _laws(env["flops"], env["params"], env["tokens"])
        except FitError:
            dropped += 1
            continue
        a.append(n_law["exponent"])
        b.append(d_law["exponent"])
        tpp.append(_tpp(n_law, d_law, median))
    out: dict[str, Any] = {
        "resampled": "runs, with replacement",
        "draws": len(a),
        "dropped": dropped,
        "a": None,
        "b": None,
        "tokens_per_param": None,
    }
    if len(a) >= DRAWS // 4:
        for key, v in (("a", a), ("b", b), ("tokens_per_param", tpp)):
            lo, hi = np.percentile(v, [2.5, 97.5])
            out[key] = [float(lo), float(hi)]
    return out


def _thin(run: Run) -> dict[str, Any]:
    assert run.ln_flops is not None and run.loss is not None
    idx = np.unique(np.linspace(0, len(run.loss) - 1, KEEP_CURVE_POINTS).astype(int))
    return {
        "flops": [float(math.exp(v)) for v in run.ln_flops[idx]],
        "loss": [float(v) for v in run.loss[idx]],
    }


def _read(records: list[dict], points: Points) -> tuple[str, list[Run], list[dict], list[str]]:
    """The points chosen ("auto" resolved), the usable runs, the excluded records and the
    warnings so far."""
    if points not in ("auto", "final", "curve"):
        raise ValueError(f"points must be 'auto', 'final' or 'curve', got {points!r}")
    chosen = _choose(read_runs(records, "final")[0]) if points == "auto" else points
    runs, excluded, warnings = read_runs(records, chosen)
    if points == "auto" and chosen == "curve":
        warnings.insert(
            0,
            f"approach 1: fewer than {MIN_SIZES} sizes have completed runs at two or more "
            "compute values, so the envelope uses whole training curves: " + CAVEAT["curve"],
        )
    return chosen, runs, excluded, warnings


def _fit_envelope(
    runs: list[Run], chosen: str, excluded: list[dict]
) -> tuple[list[dict], dict, dict]:
    """The envelope and the N_opt and D_opt laws through it; a FitError names the records
    left out."""
    why = "; ".join(f"{e['name']}: {e['reason']}" for e in excluded)
    why = f" (left out: {why})" if why else ""
    sizes = sorted({r.params for r in runs})
    if len(sizes) < MIN_SIZES:
        raise FitError(
            "approach 1 " + more(MIN_SIZES, len(sizes), "model sizes with a usable run") + why
        )
    env = envelope(runs, chosen)
    try:
        n_law, d_law = _laws(
            *(np.array([e[k] for e in env], dtype=float) for k in ("flops", "params", "tokens"))
        )
    except FitError as e:
        raise FitError(f"{e}{why}") from None
    return env, n_law, d_law


def _warn_edge_and_draws(env: list[dict], boot: dict[str, Any], warnings: list[str]) -> float:
    """Warnings for an envelope mostly at the edge of the sizes and for too few bootstrap
    draws; returns the edge fraction."""
    edge = sum(e["edge"] for e in env) / len(env)
    if edge > 0.5:
        warnings.append(
            f"approach 1: at {100 * edge:.0f}% of the grid the envelope's run is the smallest "
            "or largest size present there, so the optimum may lie outside the sizes tried; "
            "the exponents then echo the sweep's design more than they measure it"
        )
    if boot["a"] is None:
        warnings.append(
            f"approach 1: only {boot['draws']} of {DRAWS} bootstrap draws kept "
            f"{MIN_SIZES} sizes on the envelope; no intervals (add runs)"
        )
    return edge


def fit_approach1(records: list[dict], *, points: Points = "auto", seed: int = 0) -> dict[str, Any]:
    """Approach 1 over a sweep's result records (each with name, params, tokens, flops,
    val_loss or loss, run_dir). Records whose curve cannot be read are excluded with a
    reason; too few sizes or an envelope with fewer than 3 sizes raise :class:`FitError`."""
    chosen, runs, excluded, warnings = _read(records, points)
    env, n_law, d_law = _fit_envelope(runs, chosen, excluded)
    flops = [float(r["flops"]) for r in records if isinstance(r.get("flops"), (int, float))]
    median = float(np.median([f for f in flops if math.isfinite(f) and f > 0]))
    boot = _bootstrap(runs, chosen, median, seed)
    edge = _warn_edge_and_draws(env, boot, warnings)
    return {
        "method": "Chinchilla approach 1 (Hoffmann et al. 2022, §3.1): the lowest loss over "
        "runs at each compute (the envelope) gives N_opt(C) and D_opt(C); power laws fitted "
        "by least squares in log10 space",
        "points": chosen,
        "loss": "smoothed training loss (metrics.jsonl step rows)"
        if chosen == "curve"
        else "final validation loss of completed runs",
        "smoothing": (
            f"local linear least squares of loss on ln(tokens) over ±{SMOOTH_HALF_WINDOW:.1%} "
            "of a run's steps (at least ±3, shifted inward at the ends), warmup steps left out"
            if chosen == "curve"
            else None
        ),
        "caveat": CAVEAT[chosen],
        "a": n_law["exponent"],
        "b": d_law["exponent"],
        "a_ci95": boot["a"],
        "b_ci95": boot["b"],
        "n_opt_law": n_law,
        "d_opt_law": d_law,
        "tokens_per_param_at": {
            "flops": median,
            "what": "the median of the sweep's training compute",
            "tokens_per_param": _tpp(n_law, d_law, median),
            "ci95": boot["tokens_per_param"],
        },
        "bootstrap": boot,
        "envelope_sizes": len({e["params"] for e in env}),
        "edge_fraction": edge,
        "grid": {
            "points": len(env),
            "flops_range": [env[0]["flops"], env[-1]["flops"]],
            "rule": f"{GRID_POINTS} log-spaced values between the smallest and largest "
            "compute at which a run finished; values where fewer than 2 sizes have a curve dropped",
        },
        "envelope": env,
        "runs": [
            {
                "name": r.name,
                "params": r.params,
                "flops_per_token": r.flops_per_token,
                "final_flops": r.final_flops,
                "branch": r.branch,
                **({"curve": _thin(r)} if chosen == "curve" else {"loss": r.final_loss}),
            }
            for r in runs
        ],
        "excluded": excluded,
        "warnings": warnings,
    }


def summary_lines(a1: dict) -> list[str]:
    """Lines for the sweep summary (``cgpt sweep``)."""
    if a1.get("skipped"):
        return [f"approach 1 (curve envelope): {a1['skipped']}"]
    if "a" not in a1:
        return []

    def ci(v: list[float] | None) -> str:
        return f" (95% CI {v[0]:.3f}–{v[1]:.3f})" if v else " (no interval)"

    t = a1["tokens_per_param_at"]
    tci = t["ci95"]
    return [
        f"approach 1 (envelope of {a1['points']} points, {a1['envelope_sizes']} sizes on it): "
        f"N_opt ∝ C^{a1['a']:.3f}{ci(a1['a_ci95'])}, D_opt ∝ C^{a1['b']:.3f}{ci(a1['b_ci95'])}, "
        f"tokens/param at C = {t['flops']:.3g}: {t['tokens_per_param']:.1f}"
        + (f" (95% CI {tci[0]:.1f}–{tci[1]:.1f})" if tci else " (no interval)")
    ]
