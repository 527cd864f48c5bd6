"""Seed replicates of sweep points: one record per point holding the mean final loss of its
finished replicates, and the seed-to-seed spread (fit.json ``seeds``), the noise floor to
read prediction errors against (docs/SCALING.md, Seed replicates).
"""

from __future__ import annotations

import statistics
from typing import Any

from cgpt.train.sweeps.records import finished


def aggregate_replicates(records: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Records with ``replicate_of`` -> one record per replicated point: the first finished
    replicate's fields with ``val_loss`` = the mean over finished replicates, plus
    ``val_loss_seeds`` {seed: loss}, ``val_loss_sd`` (sample sd; None for one replicate) and
    ``replicates``. A point none of whose replicates finished keeps its records (the fits
    exclude them with their reasons). Records without ``replicate_of`` pass unchanged.
    A record named like a replicated point joins it: a held-out target trained at one seed
    before target_seeds asked for more keeps its name and a record without ``replicate_of``.
    Returns (records, summary for fit.json; {} when nothing was replicated)."""
    keys = {r["replicate_of"] for r in records if r.get("replicate_of") is not None}
    groups: dict[str, list[dict]] = {}
    for r in records:
        if (of := _of(r, keys)) is not None:
            groups.setdefault(of, []).append(r)
    if not groups:
        return records, {}
    summary: dict[str, Any] = {"points": {}, "warnings": []}
    merged: dict[str, list[dict]] = {}
    for key, reps in groups.items():
        ok = [r for r in reps if finished(r)]
        if not ok:
            merged[key] = reps
            continue
        losses = [float(r["val_loss"]) for r in ok]
        mean = statistics.fmean(losses)
        sd = statistics.stdev(losses) if len(losses) > 1 else None
        fields = {k: v for k, v in ok[0].items() if k not in ("seed", "replicate_of")}
        merged[key] = [
            {
                **fields,
                "name": key,
                "val_loss": mean,
                "val_loss_seeds": {str(r.get("seed")): float(r["val_loss"]) for r in ok},
                "val_loss_sd": sd,
                "replicates": len(ok),
                "wall_s": sum(float(r.get("wall_s") or 0) for r in reps),
            }
        ]
        summary["points"][key] = {
            "mean": mean,
            "sd": sd,
            "rel_sd": sd / mean if sd is not None else None,
            "losses": merged[key][0]["val_loss_seeds"],
            "failed": len(reps) - len(ok),
        }
        if len(ok) < len(reps):
            summary["warnings"].append(
                f"{key}: {len(reps) - len(ok)} of {len(reps)} seed replicates did not finish; "
                f"its mean is over {len(ok)}"
            )
    rel = [p["rel_sd"] for p in summary["points"].values() if p["rel_sd"] is not None]
    summary["mean_rel_sd"] = statistics.fmean(rel) if rel else None
    summary["max_rel_sd"] = max(rel) if rel else None
    out: list[dict] = []  # in the records' order, each point where its first replicate was
    for r in records:
        of = _of(r, keys)
        if of is None:
            out.append(r)
        elif r is groups[of][0]:
            out += merged[of]
    return out, summary


def _of(r: dict, keys: set[str]) -> str | None:
    """The replicated point record ``r`` belongs to (None: not a replicate)."""
    of = r.get("replicate_of")
    return of if of is not None else (r.get("name") if r.get("name") in keys else None)


def summary_line(summary: dict[str, Any]) -> list[str]:
    if not summary or summary.get("mean_rel_sd") is None:
        return []
    n = max(len(p["losses"]) for p in summary["points"].values())
    return [
        f"seed replicates: up to {n} per point; one run's final loss varies with the seed by "
        f"{100 * summary['mean_rel_sd']:.2f}% (sd, mean over points; max "
        f"{100 * summary['max_rel_sd']:.2f}%): read prediction errors against it"
    ]
