"""The loss at the best learning rate of one size, from a grid of LR trials: the best trial,
or (``lr_select: parabola``) the vertex of a parabola in ln(LR) through the best trial and
its two neighbours where it lies between them (why: docs/SCALING.md, The loss at the best
learning rate); and the optimal LR as a power law of model size (:func:`lr_law`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

LR_SELECT = ("best", "parabola")


def parabola_vertex(
    x: tuple[float, float, float], y: tuple[float, float, float]
) -> tuple[float, float] | None:
    """Vertex (x*, y*) of the parabola through three points with x0 < x1 < x2, or None when
    the parabola opens downwards or is flat."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    if not a > 0:
        return None
    b = d01 - a * (x0 + x1)
    c = y0 - a * x0 * x0 - b * x0
    return -b / (2 * a), c - b * b / (4 * a)


def lr_optimum(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """``trials``: [{"lr": float, "val_loss": float | None}, ...] of one size. Returns
    {"lr", "loss", "method": "parabola" | "best", "reason"} ("reason" says why the best trial
    stands when it does)."""
    ok = sorted(
        (float(t["lr"]), float(t["val_loss"]))
        for t in trials
        if t.get("val_loss") is not None and math.isfinite(float(t["val_loss"]))
    )
    if not ok:
        raise ValueError("no finished trial")
    i = min(range(len(ok)), key=lambda k: ok[k][1])
    best = {"lr": ok[i][0], "loss": ok[i][1], "method": "best"}
    if len(ok) < 3:
        return {**best, "reason": "fewer than 3 finished trials"}
    if i in (0, len(ok) - 1):
        return {**best, "reason": "the best trial is at the edge of the grid"}
    xs = tuple(math.log(ok[k][0]) for k in (i - 1, i, i + 1))
    ys = tuple(ok[k][1] for k in (i - 1, i, i + 1))
    vertex = parabola_vertex(xs, ys)  # type: ignore[arg-type]
    if vertex is None or not xs[0] < vertex[0] < xs[2]:
        return {**best, "reason": "the three trials around the best are not convex"}
    return {"lr": math.exp(vertex[0]), "loss": vertex[1], "method": "parabola", "reason": None}


def lr_law(optima: list[tuple[float, float]]) -> dict[str, Any]:
    """The optimal LR as a power of model size, ``lr = lr_ref × (N / n_ref)^exponent``, fitted
    by least squares in log-log to ``optima`` [(params N, optimal LR), ...] of two or more
    sizes (n_ref: the largest N). A held-out target of a tuned sweep trains at this law's LR
    (DeepSeek-AI 2024, arXiv 2401.02954, section 3.1, fits the optimal LR as a power law the
    same way). When the ladder does not resolve the exponent (its 95% interval holds 0) the
    law is the constant geometric mean of the optima ("form": "constant"): a trend the data
    cannot tell from noise is not extrapolated. Returns {"exponent", "lr_ref", "n_ref",
    "rmse_ln", "points", "form", "power": the fitted power law, with "exponent_ci95"}."""
    pts = sorted((float(n), float(lr)) for n, lr in optima)
    if len({n for n, _ in pts}) < 2:
        raise ValueError("an LR law needs the optimal LR of two or more sizes")
    n_ref = pts[-1][0]
    xs = [math.log(n / n_ref) for n, _ in pts]
    ys = [math.log(lr) for _, lr in pts]
    slope, icpt = statistics.linear_regression(xs, ys)
    ci = _slope_ci(xs, ys, slope, icpt)
    power = {"exponent": slope, "lr_ref": math.exp(icpt), "exponent_ci95": ci}
    if ci is not None and ci[0] <= 0 <= ci[1]:
        form, exponent, icpt = "constant", 0.0, statistics.fmean(ys)
    else:
        form, exponent = "power", slope
    res = [y - (icpt + exponent * x) for x, y in zip(xs, ys)]
    return {
        "exponent": exponent,
        "lr_ref": math.exp(icpt),
        "n_ref": n_ref,
        "rmse_ln": math.sqrt(sum(r * r for r in res) / len(res)),
        "points": [{"params": n, "lr": lr} for n, lr in pts],
        "form": form,
        "power": power,
    }


def _slope_ci(xs: list[float], ys: list[float], slope: float, icpt: float) -> list[float] | None:
    """95% interval of the least-squares ``slope`` (and ``icpt``) through xs, ys (Student t,
    n - 2 dof); None for two points."""
    n = len(xs)
    if n < 3:
        return None
    from scipy import stats  # deferred: only tuned sweeps with targets fit an LR law

    sxx = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
    s2 = sum((y - icpt - slope * x) ** 2 for x, y in zip(xs, ys)) / (n - 2)
    half = float(stats.t.ppf(0.975, n - 2)) * math.sqrt(s2 / sxx)
    return [slope - half, slope + half]


def lr_from_law(law: dict[str, Any], params: float) -> float:
    """The LR ``law`` (:func:`lr_law`) gives a model of ``params`` parameters."""
    return float(law["lr_ref"] * (params / law["n_ref"]) ** law["exponent"])
