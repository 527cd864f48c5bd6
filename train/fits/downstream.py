"""Downstream accuracy from loss, the second step of a two-step prediction (compute -> loss
-> task accuracy; Bhagia et al. 2024, arXiv 2412.04403): a sigmoid acc(L) per task fitted
to (loss, accuracy) pairs, the paper's or a sweep's own (docs/SCALING.md, Downstream
accuracy from loss). Pure numerics (numpy; scipy imported where a fit runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB
from cgpt.train.eval.paper import DISPLAY, PAPER_ZERO_SHOT, SUITE_TASKS
from cgpt.train.metrics import read_metrics
from cgpt.train.plan.rules import ScalingLaw

# docs/REFERENCE.md, Results: train FLOPs and Pile test loss (nats/token) of the paper's
# seven standard-parameterisation models
PAPER_SIZES: tuple[str, ...] = ("111M", "256M", "590M", "1.3B", "2.7B", "6.7B", "13B")
PAPER_FLOPS: dict[str, float] = dict(
    zip(PAPER_SIZES, (2.6e18, 1.3e19, 6.1e19, 2.8e20, 1.1e21, 6.3e21, 2.3e22))
)
PAPER_PILE_LOSS: dict[str, float] = dict(
    zip(PAPER_SIZES, (2.608, 2.349, 2.181, 1.997, 1.834, 1.704, 1.572))
)
# chance accuracy of each task's ``acc``: 4 endings (HellaSwag), 2 solutions (PIQA), 2 options
# (WinoGrande), an open-vocabulary last word (LAMBADA: 0), 4 choices (ARC, OpenBookQA; a few
# ARC questions have 3 or 5); "avg" is their mean, as the table's average is the tasks' mean
CHANCE: dict[str, float] = {
    "hellaswag": 0.25,
    "piqa": 0.5,
    "winogrande": 0.5,
    "lambada_openai": 0.0,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
}
CHANCE["avg"] = sum(CHANCE.values()) / len(CHANCE)
TASKS_AND_AVG: tuple[str, ...] = (*SUITE_TASKS, "avg")
SCOPE = (
    "the mapping was fitted on the paper's Pile test loss with the GPT-2 tokenizer: it holds "
    "only for that data and tokenizer"
)


def sigmoid_acc(loss, floor: float, ceiling: float, k: float, l0: float):
    """acc(L) = floor + (ceiling - floor) / (1 + exp(k (L - L0)))."""
    z = np.clip(k * (np.asarray(loss, dtype=float) - l0), -60, 60)
    return floor + (ceiling - floor) / (1.0 + np.exp(z))


def _jac(x, floor: float, ceiling: float, k: float, l0: float):
    """d acc / d (ceiling, k, L0) of :func:`sigmoid_acc` (a 3-column matrix)."""
    z = np.clip(k * (x - l0), -60, 60)
    s = 1.0 / (1.0 + np.exp(z))  # the sigmoid; ds/dz = -s (1 - s)
    ds = -(ceiling - floor) * s * (1 - s)
    return np.stack([s, ds * (x - l0), -ds * k], axis=1)


def fit_accuracy(
    losses: Iterable[float],
    accs: Iterable[float],
    chance: float,
    start: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Fit ceiling, k and L0 of :func:`sigmoid_acc` by bounded least squares (the floor:
    ``chance``, or the lowest accuracy seen if that is lower). Needs 4 points (3 parameters
    + 1). ``start``: one (ceiling, k, L0) start (a bootstrap refit starts at the fit);
    else a few starts of L0 across and beyond the losses (the steep part may lie past
    them)."""
    from scipy import optimize

    x = np.asarray(list(losses), dtype=float)
    y = np.asarray(list(accs), dtype=float)
    if len(x) < 4:
        raise CgptError(
            f"an accuracy-from-loss fit needs at least 4 (loss, acc) pairs, got {len(x)}"
        )
    floor = min(chance, float(y.min()) - 1e-3)
    top = float(y.max())
    starts = (
        [start]
        if start
        else [(min(1.0, top + 0.2), 2.0, l0) for l0 in np.linspace(x.min() - 1, x.max(), 5)]
    )
    best = None
    for s in starts:
        s = (min(max(s[0], top), 1.0), min(max(s[1], 1e-3), 100.0), s[2])
        r = optimize.least_squares(
            lambda p: sigmoid_acc(x, floor, p[0], p[1], p[2]) - y,
            x0=s,
            jac=lambda p: _jac(x, floor, *p),
            bounds=([top, 1e-3, -np.inf], [1.0, 100.0, np.inf]),
            method="trf",
        )
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    ceiling, k, l0 = (float(v) for v in best.x)
    resid = y - sigmoid_acc(x, floor, ceiling, k, l0)
    return {
        "floor": floor,
        "ceiling": ceiling,
        "k": k,
        "l0": l0,
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "residuals": [float(v) for v in resid],
        "n_points": int(len(x)),
    }


def predict_accuracy(
    losses: Sequence[float],
    accs: Sequence[float],
    chance: float,
    at_loss: float,
    *,
    loss_sd: float = 0.0,
) -> dict[str, Any]:
    """The accuracy at ``at_loss`` from the sigmoid fitted to (losses, accs), with a 95%
    prediction interval from the linearised fit (the delta method; a bootstrap of refits
    costs ~1000x more and `cgpt plan` runs this for eight mappings): the parameters'
    covariance s^2 (J^T J)^-1 (s^2 = residual sum of squares / (n - 3)), the loss's own
    uncertainty ``loss_sd`` carried through d acc / d L, and the new model's scatter s about
    the curve, at Student's t with n - 3 degrees of freedom."""
    from scipy import stats

    fit = fit_accuracy(losses, accs, chance)
    x = np.asarray(losses, dtype=float)
    p = (fit["ceiling"], fit["k"], fit["l0"])
    dof = len(x) - 3
    s2 = float(np.sum(np.square(fit["residuals"]))) / dof
    jac = _jac(x, fit["floor"], *p)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    g = _jac(np.array([at_loss]), fit["floor"], *p)[0]
    eps = 1e-5
    slope = float(
        sigmoid_acc(at_loss + eps, fit["floor"], *p) - sigmoid_acc(at_loss - eps, fit["floor"], *p)
    ) / (2 * eps)
    var = float(g @ cov @ g) + (slope * loss_sd) ** 2 + s2
    acc = float(sigmoid_acc(at_loss, fit["floor"], *p))
    half = float(stats.t.ppf(0.975, dof)) * math.sqrt(var)
    fit["slope_per_nat"] = slope
    # an accuracy lies in [0, 1]: few points (dof 2-3) make the linearised interval wide
    pi = [max(0.0, acc - half), min(1.0, acc + half)]
    return {"acc": acc, "pi95": pi, "fit": fit}


def paper_pairs(task: str, sizes: Iterable[str] = PAPER_SIZES) -> tuple[list[float], list[float]]:
    """The paper's (Pile loss, 0-shot acc) pairs of ``task`` (a suite task or "avg")."""
    sizes = list(sizes)
    return [PAPER_PILE_LOSS[s] for s in sizes], [PAPER_ZERO_SHOT[s][task] for s in sizes]


def paper_accuracy(
    loss: float, *, loss_sd: float = 0.0, sizes: Iterable[str] = PAPER_SIZES
) -> dict[str, dict[str, Any]]:
    """Predicted 0-shot ``acc`` per task and for the 7-task average at a Pile loss, from the
    mapping fitted on the paper's pairs of ``sizes``."""
    sizes = list(sizes)
    out = {}
    for task in TASKS_AND_AVG:
        xs, ys = paper_pairs(task, sizes)
        out[task] = predict_accuracy(xs, ys, CHANCE[task], loss, loss_sd=loss_sd)
    return out


def leave_largest_out(
    fitted_sizes: Sequence[str] = PAPER_SIZES[:-1],
    target: str = "13B",
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """The two-step prediction on the paper's own table: the loss law fitted on
    ``fitted_sizes`` predicts ``target``'s Pile loss (cgpt.train.fits.fit.fit_paper_law),
    and the accuracy mappings fitted on the same sizes turn that loss into 0-shot accuracy.
    Errors are predicted - published (loss: relative; accuracy: points, x100)."""
    from cgpt.train.fits.fit import fit_paper_law  # scipy

    flops = [PAPER_FLOPS[s] for s in fitted_sizes]
    law = fit_paper_law(
        flops,
        [PAPER_PILE_LOSS[s] for s in fitted_sizes],
        n_boot=n_boot,
        seed=seed,
        predict_at=[PAPER_FLOPS[target]],
    )
    pred = law["predictions"][0]
    measured = PAPER_PILE_LOSS[target]
    pi = pred["pi95"]
    loss_sd = (pi[1] - pi[0]) / 3.92 if pi else 0.0
    acc = paper_accuracy(pred["loss"], loss_sd=loss_sd, sizes=fitted_sizes)
    tasks = {}
    for task, a in acc.items():
        true = PAPER_ZERO_SHOT[target][task]
        tasks[task] = {
            "predicted": a["acc"],
            "pi95": a["pi95"],
            "published": true,
            "error_points": 100 * (a["acc"] - true),
            "inside_pi95": None if a["pi95"] is None else a["pi95"][0] <= true <= a["pi95"][1],
        }
    return {
        "fitted_on": list(fitted_sizes),
        "target": target,
        "extrapolation_ratio": PAPER_FLOPS[target] / max(flops),
        "loss": {
            "predicted": pred["loss"],
            "pi95": pi,
            "published": measured,
            "rel_error": (pred["loss"] - measured) / measured,
            "inside_pi95": None if pi is None else pi[0] <= measured <= pi[1],
        },
        "law": {k: law[k] for k in ("a", "b", "c")},
        "accuracy": tasks,
    }


def task_pairs(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """{TASK/METRIC: [(val loss, score), ...]} from each finished record's run: the last
    metrics row holding both ``val_loss`` and in-loop task scores (``eval/TASK/METRIC``,
    runtime.eval_tasks)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.get("status") != "ok" or not r.get("run_dir"):
            continue
        path = Path(r["run_dir"]) / "metrics.jsonl"
        rows = [m for m in read_metrics(path) if "val_loss" in m] if path.is_file() else []
        scored = [m for m in rows if any(k.startswith("eval/") for k in m)]
        if not scored:
            continue
        last = scored[-1]
        for k, v in last.items():
            if k.startswith("eval/") and k.endswith(("/acc", "/acc_norm")):
                pairs.setdefault(k.removeprefix("eval/"), []).append((last["val_loss"], v))
    return pairs


def sweep_mappings(records: list[dict]) -> dict[str, Any]:
    """A sweep's own accuracy-from-loss mappings (its in-loop task scores against its val
    loss, the same sigmoid as the paper's), each with a leave-largest-out check: fitted
    without the lowest-loss run, the accuracy predicted at that run's loss vs measured.
    Tasks with fewer than 5 runs are listed as skipped."""
    out: dict[str, Any] = {
        "tasks": {},
        "skipped": {},
        "note": SCOPE.replace(
            "the paper's Pile test loss with the GPT-2 tokenizer", "this sweep's val loss"
        ),
    }
    for key, pts in sorted(task_pairs(records).items()):
        if len(pts) < 5:
            out["skipped"][key] = f"{len(pts)} runs with scores; the mapping needs 5"
            continue
        pts = sorted(pts)  # by loss: the lowest first
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        chance = CHANCE.get(key.split("/")[0], min(ys))
        held = predict_accuracy(xs[1:], ys[1:], chance, xs[0])
        out["tasks"][key] = {
            "fit": fit_accuracy(xs, ys, chance),
            "leave_largest_out": {
                "loss": xs[0],
                "predicted": held["acc"],
                "pi95": held["pi95"],
                "measured": ys[0],
                "error_points": 100 * (held["acc"] - ys[0]),
            },
        }
    return out


def plan_rows(
    loss: float, loss_pi95: Sequence[float] | None, vocab_size: int, law_source: str
) -> list[tuple[str, str]]:
    """`cgpt plan`'s rows: the predicted 0-shot accuracy next to the predicted loss, for a
    plan whose loss is the paper's law (Pile, GPT-2 tokenizer); none for other data."""
    if vocab_size != GPT2_VOCAB or law_source != ScalingLaw().source:
        return []
    # the paper law's own scatter about the seven points (RMS ~0.011) when the plan gives no
    # interval of its own
    scatter = float(
        np.sqrt(
            np.mean(
                [(PAPER_PILE_LOSS[s] - ScalingLaw().loss(PAPER_FLOPS[s])) ** 2 for s in PAPER_SIZES]
            )
        )
    )
    sd = (loss_pi95[1] - loss_pi95[0]) / 3.92 if loss_pi95 else scatter
    acc = paper_accuracy(loss, loss_sd=sd)

    def cell(a: dict) -> str:
        pi = a["pi95"]
        return f"{100 * a['acc']:.1f}" + (f" ({100 * pi[0]:.1f}-{100 * pi[1]:.1f})" if pi else "")

    tasks = ", ".join(f"{DISPLAY[t]} {cell(acc[t])}" for t in SUITE_TASKS)
    return [
        ("predicted 0-shot avg", f"{cell(acc['avg'])}% (95% interval; 7 tasks, acc)"),
        ("predicted per task", tasks),
        ("accuracy note", f"acc(L) sigmoid fitted to the paper's 7 (loss, acc) pairs; {SCOPE}"),
    ]


__all__ = [
    "CHANCE",
    "PAPER_FLOPS",
    "PAPER_PILE_LOSS",
    "PAPER_SIZES",
    "SCOPE",
    "TASKS_AND_AVG",
    "fit_accuracy",
    "leave_largest_out",
    "paper_accuracy",
    "paper_pairs",
    "plan_rows",
    "predict_accuracy",
    "sigmoid_acc",
    "sweep_mappings",
    "task_pairs",
]
