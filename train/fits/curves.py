"""Approach 1's input: each sweep result record as a run, with its final point and, for
``points="curve"``, its training curve read from ``metrics.jsonl`` in its run folder and
smoothed (docs/SCALING.md, Approach 1). A record that cannot give one is skipped with the
reason."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the file cgpt.train.sweeps.branch.make_branch writes last into a cooldown branch's run
# folder; defined here, in the lower layer that reads it, so the fits need not import sweeps
BRANCH_FILE = "branch.json"
MIN_CURVE_STEPS = 5  # post-warmup step rows a run's curve needs
SMOOTH_HALF_WINDOW = 0.025  # fraction of a run's steps on each side of the smoothed step


class _Skip(Exception):
    """A run that cannot give a curve (the reason is its message)."""


@dataclass
class Run:
    """One usable run: its final point and (``points="curve"``) its smoothed curve."""

    name: str
    params: float
    flops_per_token: float
    final_flops: float
    final_loss: float
    branch: bool
    ln_flops: np.ndarray | None = None  # the smoothed curve, increasing ln C
    loss: np.ndarray | None = None


def smooth(x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """Local linear least squares of y on x over the index window [i-half, i+half], read at
    x[i]; near the ends the window keeps its width and shifts inward (a line through the
    last 2·half+1 points read at the last one is steadier than one through fewer). O(n)
    with cumulative sums."""
    n = len(y)
    width = min(2 * half + 1, n)
    lo = np.clip(np.arange(n) - half, 0, n - width)
    hi = lo + width
    xc = x - x.mean()  # centred: the sums below subtract large, nearly equal numbers

    def window_sum(v: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(v)])
        return c[hi] - c[lo]

    s0 = (hi - lo).astype(float)
    s1, s2 = window_sum(xc), window_sum(xc * xc)
    t0, t1 = window_sum(y), window_sum(xc * y)
    den = s0 * s2 - s1 * s1
    flat = den <= 1e-12 * np.maximum(s0 * s2, 1e-300)  # x constant in the window
    slope = np.where(flat, 0.0, (s0 * t1 - s1 * t0) / np.where(flat, 1.0, den))
    return (t0 - slope * s1) / s0 + slope * xc


def _number(rec: dict, key: str) -> float:
    v = rec.get(key)
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _Skip(f"its record has no usable {key} ({v!r})") from None
    if not (math.isfinite(f) and f > 0):
        raise _Skip(f"its record has {key} = {v!r}")
    return f


def _is_branch(rec: dict) -> bool:
    d = rec.get("run_dir")
    return bool(d) and (Path(str(d)) / BRANCH_FILE).is_file()


def _final_run(rec: dict) -> Run:
    params, tokens, flops = (_number(rec, k) for k in ("params", "tokens", "flops"))
    loss = rec.get("loss", rec.get("val_loss"))
    if loss is None or not math.isfinite(float(loss)):
        raise _Skip(f"its final loss is {loss}")
    return Run(
        name=str(rec.get("name")),
        params=params,
        flops_per_token=flops / tokens,
        final_flops=flops,
        final_loss=float(loss),
        branch=_is_branch(rec),
    )


def _step_rows(path: Path) -> tuple[list[dict], int]:
    """The training-step rows of a metrics.jsonl (rows with loss and lr) and how many lines
    could not be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise _Skip(f"its metrics file {path} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _Skip(f"its metrics file {path} cannot be read ({e})") from None
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and "loss" in row and "lr" in row:
            rows.append(row)
    return rows, bad


def _curve_run(rec: dict, warnings: list[str]) -> Run:
    run = _final_run(rec)
    if not rec.get("run_dir"):
        raise _Skip("its record has no run_dir")
    path = Path(str(rec["run_dir"])) / "metrics.jsonl"
    rows, bad = _step_rows(path)
    warmup = int(rec.get("warmup_steps") or 0)
    by_step: dict[int, tuple[float, float]] = {}
    for r in rows:
        try:
            step, tok, lo = int(r["step"]), float(r["tokens"]), float(r["loss"])
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        if step > warmup and tok > 0 and math.isfinite(lo) and math.isfinite(tok):
            by_step[step] = (tok, lo)  # a repeated step: the last row wins
    if len(by_step) < MIN_CURVE_STEPS:
        raise _Skip(
            f"its metrics file {path} has {len(by_step)} usable training-step rows after the "
            f"warmup ({bad} unreadable lines); a curve needs {MIN_CURVE_STEPS}"
        )
    steps = sorted(by_step)
    tokens = np.array([by_step[s][0] for s in steps])
    loss = np.array([by_step[s][1] for s in steps])
    if np.any(np.diff(tokens) <= 0):
        raise _Skip(f"its metrics file {path} has tokens that do not grow with the step")
    if bad:
        warnings.append(f"approach 1: {run.name}: {bad} unreadable lines in {path} skipped")
    if tokens[-1] < 0.99 * run.final_flops / run.flops_per_token:
        warnings.append(
            f"approach 1: {run.name}: its metrics end at {tokens[-1]:.4g} tokens but the run "
            f"trained {run.final_flops / run.flops_per_token:.4g}; its curve stops there"
        )
    half = max(3, int(SMOOTH_HALF_WINDOW * len(steps)))
    ln_t = np.log(tokens)
    run.ln_flops = ln_t + math.log(run.flops_per_token)
    run.loss = smooth(ln_t, loss, half)
    # the curve's end is the run's end on the grid (its loss is the smoothed training loss)
    run.final_flops = float(math.exp(run.ln_flops[-1]))
    return run


def read_runs(records: list[dict], points: str) -> tuple[list[Run], list[dict], list[str]]:
    """Usable runs, excluded records ({name, reason}) and warnings, for ``points``
    ("final" or "curve")."""
    runs: list[Run] = []
    excluded: list[dict] = []
    warnings: list[str] = []
    for rec in records:
        try:
            runs.append(_curve_run(rec, warnings) if points == "curve" else _final_run(rec))
        except _Skip as e:
            excluded.append({"name": rec.get("name"), "reason": str(e)})
    return runs, excluded, warnings
