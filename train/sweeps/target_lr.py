"""The LR of a tuned sweep's held-out targets (``lr: tuned``, or ``lr: mup`` with ``lr_grid``,
with ``targets``): each target trains once, at the LR that a power law through the ladder's
optimal LRs gives its size (cgpt.train.fits.lr_optimum.lr_law); with μP these are base LRs,
which μP then transfers to the target's width. That law exists only once every ladder size has
finished its trials, so the targets are planned again then; until then they show the
sweep's rule LR.
"""

from __future__ import annotations

from typing import Any

from cgpt.model.errors import CgptError
from cgpt.train.fits.lr_optimum import lr_from_law, lr_law
from cgpt.train.sweeps.config import SweepConfig
from cgpt.train.sweeps.points import Point, plan_targets
from cgpt.train.sweeps.records import best_trials, finished
from cgpt.train.sweeps.seeds import aggregate_replicates


def ladder_lr_law(records: list[dict], select: str, groups: set[str]) -> dict[str, Any]:
    """The LR law of the ladder's finished ``records`` (targets are ignored); ``groups``: every
    LR-trial group (size) of the ladder, each of which must have a finished trial."""
    ladder = [r for r in records if not r.get("target")]
    merged, _ = aggregate_replicates(ladder)
    kept, _ = best_trials(merged, select)
    return lr_law_of_kept(kept, select, groups)


def lr_law_of_kept(kept: list[dict], select: str, groups: set[str]) -> dict[str, Any]:
    """:func:`ladder_lr_law` from the records best_trials kept (one per group)."""
    best = {r["group"]: r for r in kept if r.get("group") is not None and finished(r)}
    missing = sorted(groups - set(best))
    if missing:
        raise CgptError(
            f"the held-out targets train at the LR law of the ladder's optimal LRs, but "
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no finished LR "
            "trial yet; finish the ladder first (--retry-failed reruns failed trials)"
        )
    optima = [(r["params"], r.get("lr_opt") or r["lr"]) for r in best.values()]
    try:
        law = lr_law(optima)
    except ValueError as e:
        raise CgptError(f"held-out targets: {e}; tune two or more sizes") from None
    mup = all(r.get("lr_mode") == "mup" for r in best.values())
    return {**law, "select": select, **({"mup": True} if mup else {})}


def law_text(law: dict[str, Any]) -> str:
    """One line: the LR law and what it was fitted on."""
    kind = "μP base LRs" if law.get("mup") else "LRs"
    fitted = f"optimal {kind} of {len(law['points'])} sizes, {law['select']}"
    if law.get("form") == "constant":
        p = law["power"]
        lo, hi = p["exponent_ci95"]
        return (
            f"lr = {law['lr_ref']:.3g} at every size, the geometric mean of the {fitted}: "
            f"their trend N^{p['exponent']:.3f} is not resolved (95% interval {lo:.2f} to "
            f"{hi:.2f}), so it is not extrapolated (rms residual {law['rmse_ln']:.3f} in ln lr)"
        )
    return (
        f"lr = {law['lr_ref']:.3g} x (N / {law['n_ref']:,.0f})^{law['exponent']:.3f} "
        f"({fitted}; rms residual {law['rmse_ln']:.3f} in ln lr)"
    )


def with_target_lrs(
    sweep: SweepConfig, points: list[Point], vocab: int, records: list[dict], *, strict: bool
) -> tuple[list[Point], dict[str, Any] | None]:
    """``points`` with the held-out targets planned at the ladder's LR law (and the law), when
    ``sweep`` is tuned with targets. Without a finished trial for every ladder size the
    points come back unchanged (``strict``: CgptError instead)."""
    if not sweep.tunes_lr or not sweep.targets:
        return points, None
    groups = {p.group for p in points if p.group is not None}
    try:
        law = ladder_lr_law(records, sweep.lr_select, groups)
    except CgptError:
        if strict:
            raise
        return points, None
    lrs = {p.name: float(f"{lr_from_law(law, p.cfg.plan.params):.4g}") for p in points if p.target}
    at_law = {q.name: q for q in plan_targets(sweep, vocab, lrs)}
    return [at_law.get(p.name, p) for p in points], law
