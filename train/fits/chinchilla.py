"""Chinchilla "approach 3" (Hoffmann et al. 2022, arXiv 2203.15556): ``L(N, D) = E + A/N^α +
B/D^β`` fitted like the paper (Huber loss on log-loss residuals, L-BFGS from a grid of
starts, bootstrap intervals over points; docs/SCALING.md, Approach 3). Pure numpy/scipy.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy import optimize

from cgpt.train.fits.common import FitError, finite, more, r2

MIN_CHINCHILLA_POINTS = 6  # five parameters + one degree of freedom


def _huber(r: np.ndarray, delta: float = 1e-3) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _chin_objective(theta, ln_n, ln_d, ln_l, delta=1e-3):
    """Huber loss of log-space residuals and its exact gradient (L-BFGS-B converges in far
    fewer evaluations than with finite differences)."""
    a, b, e, alpha, beta = theta
    u = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
    pred = np.logaddexp.reduce(u, axis=0)
    r = pred - ln_l
    w = np.exp(u - pred)  # softmax weights: d pred / d u_i
    h = np.clip(r, -delta, delta)  # Huber derivative
    grad = np.array(
        [
            np.sum(h * w[0]),
            np.sum(h * w[1]),
            np.sum(h * w[2]),
            -np.sum(h * w[0] * ln_n),
            -np.sum(h * w[1] * ln_d),
        ]
    )
    return float(np.sum(_huber(r, delta))), grad


def _one_blas_thread():
    """BLAS calls on 5-vectors are slower multi-threaded, ~50x on a busy machine (measured
    with scipy's L-BFGS-B): run the fits on one thread where threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def _chin_minimize(starts, ln_n, ln_d, ln_l):
    """L-BFGS (scipy's L-BFGS-B, no bounds) from every start, like Hoffmann et al.; the
    lowest objective wins. Tight tolerances: the Huber gradients near the optimum are tiny."""
    best = None
    with _one_blas_thread():
        for x0 in starts:
            r = optimize.minimize(
                _chin_objective,
                x0,
                args=(ln_n, ln_d, ln_l),
                jac=True,
                method="L-BFGS-B",
                options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000},
            )
            if best is None or r.fun < best.fun:
                best = r
    assert best is not None, "no starts given"
    return best.x


# Hoffmann et al. 2022, Appendix D.2: the grid of L-BFGS starts for (α, β, e, a, b), with
# E = exp(e), A = exp(a), B = exp(b); 4,500 starts (Besiroglu et al. 2024 refit with it too)
HOFFMANN_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}


def chinchilla_starts(grid: str, y_min: float) -> list[tuple[float, ...]]:
    """Starts as (ln A, ln B, ln E, α, β). "hoffmann": the paper's full grid (4,500 starts,
    ~2-5 min); "coarse" (default): 48 starts, ln A, ln B ∈ {0, 10}, E at 20/50/80% of the
    lowest loss, α, β ∈ {0.3, 1}; measured to reach the same optimum on the synthetic
    Chinchilla and Besiroglu data of tests/test_fit.py."""
    if grid == "hoffmann":
        g = HOFFMANN_GRID
        return [
            (a, b, e, al, be)
            for a, b, e, al, be in itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])
        ]
    if grid != "coarse":
        raise ValueError(f"grid must be 'coarse' or 'hoffmann', got {grid!r}")
    e0 = [math.log(y_min * f) for f in (0.2, 0.5, 0.8)]
    return list(itertools.product((0.0, 10.0), (0.0, 10.0), e0, (0.3, 1.0), (0.3, 1.0)))


def chinchilla_loss(n, d, E, A, B, alpha, beta):
    return E + A / np.asarray(n, float) ** alpha + B / np.asarray(d, float) ** beta


def fit_chinchilla(
    params, tokens, losses, *, n_boot: int = 100, seed: int = 0, grid: str = "coarse"
) -> dict:
    """Approach 3 (Hoffmann et al. 2022): minimise the Huber loss (δ = 1e-3) of
    log L̂(N, D) - log L over the points, L̂ = E + A/N^α + B/D^β written as
    LSE(a - α·ln N, b - β·ln D, e), with L-BFGS from a grid of starts (``grid``, see
    :func:`chinchilla_starts`); 95% intervals from a bootstrap over points (resampled with
    replacement, each refitted from the optimum), as Besiroglu et al. 2024 did."""
    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, losses))
    if len(y) < MIN_CHINCHILLA_POINTS:
        raise FitError(
            "L(N, D) = E + A/N^α + B/D^β " + more(MIN_CHINCHILLA_POINTS, len(y), "points")
        )
    ratio = d / n
    if ratio.max() / ratio.min() < 1.5:
        raise FitError(
            "L(N, D) needs points at different tokens-per-parameter ratios; at one "
            "ratio N and D move together and A/N^α cannot be told from B/D^β "
            "(run an IsoFLOP sweep)"
        )
    ln_n, ln_d, ln_l = np.log(n), np.log(d), np.log(y)
    theta = _chin_minimize(chinchilla_starts(grid, float(y.min())), ln_n, ln_d, ln_l)
    A, B, E = (math.exp(v) for v in theta[:3])  # theta = (ln A, ln B, ln E, α, β)
    alpha, beta = float(theta[3]), float(theta[4])
    yhat = chinchilla_loss(n, d, E, A, B, alpha, beta)
    out: dict[str, Any] = {
        "E": E,
        "A": A,
        "B": B,
        "alpha": alpha,
        "beta": beta,
        "r2": finite(r2(y, yhat)),
        "rmse": float(np.sqrt(np.mean((y - yhat) ** 2))),
        "n_points": int(len(y)),
        "objective": "Huber(delta=1e-3) of log residuals, L-BFGS",
        "starts": grid,
        "ci95": None,
    }
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(idx.tolist())) < MIN_CHINCHILLA_POINTS:
            continue
        draws.append(_chin_minimize([theta], ln_n[idx], ln_d[idx], ln_l[idx]))
    if len(draws) >= 20:
        dr = np.array(draws)
        lo, hi = np.percentile(dr, [2.5, 97.5], axis=0)
        out["ci95"] = {
            "E": [math.exp(lo[2]), math.exp(hi[2])],
            "A": [math.exp(lo[0]), math.exp(hi[0])],
            "B": [math.exp(lo[1]), math.exp(hi[1])],
            "alpha": [float(lo[3]), float(hi[3])],
            "beta": [float(lo[4]), float(hi[4])],
            "n_boot": len(draws),
        }
    # compute-optimal split under C ≈ 6·N·D (Hoffmann et al. eq. 4)
    if alpha > 0 and beta > 0:
        g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        out["n_opt_exponent"] = beta / (alpha + beta)
        out["d_opt_exponent"] = alpha / (alpha + beta)
        out["n_opt_coefficient"] = g  # N_opt = G·(C/6)^(β/(α+β))
    return out


def chinchilla_tokens_per_param(fit: dict, flops: float) -> float | None:
    """D_opt/N_opt that the approach-3 fit implies at compute C ≈ 6·N·D."""
    if "n_opt_coefficient" not in fit:
        return None
    n_opt = fit["n_opt_coefficient"] * (flops / 6) ** fit["n_opt_exponent"]
    return float(flops / 6 / n_opt / n_opt)
