"""A sweep's result records (``OUT/results.jsonl``: one line per point) and the choice of
the best LR trial per group (``lr: tuned``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cgpt.model.sizes import num_non_embedding_params, num_params
from cgpt.train.config import write_text_atomic
from cgpt.train.fits.lr_optimum import lr_optimum
from cgpt.train.sweeps.points import Point


def make_record(
    p: Point,
    status: str,
    did: str,
    summary: dict | None = None,
    reason: str | None = None,
    wall_s: float | None = None,
) -> dict:
    m = p.cfg.model
    summary = summary or {}
    tokens = int(summary.get("tokens") or 0) or p.cfg.plan.tokens
    val = summary.get("val_loss")
    return {
        "name": p.name,
        "status": status,
        "budget": p.budget,
        "n_layer": m.n_layer,
        "n_embd": m.n_embd,
        "n_head": m.n_head,
        "params": num_params(m),
        "non_embedding_params": num_non_embedding_params(m),
        "tokens": tokens,
        "tokens_per_param": tokens / num_params(m),
        "flops": p.flops(tokens),  # as if trained alone
        "cost_flops": p.cost_flops(tokens),  # what the sweep spent (a branch: its cooldown)
        "steps": summary.get("steps"),
        "lr": p.cfg.plan.lr,
        "lr_mode": "mup" if p.cfg.model.mup is not None else ("tuned" if p.group else "fixed"),
        "group": p.group,
        "lr_mult": p.lr_mult,
        "branch_of": p.branch_of,
        "tokens_multiple": p.tokens_multiple,
        "branch_step": p.branch_step,
        "replicate_of": p.replicate_of,
        "seed": p.seed if p.seed is not None else p.cfg.runtime.seed,
        "target": p.target,
        "global_batch_seqs": p.cfg.plan.global_batch_seqs,
        "warmup_steps": p.cfg.plan.warmup_steps,
        "val_loss": float(val) if val is not None else None,
        "train_loss": summary.get("loss"),
        "wall_s": wall_s,
        "run_dir": p.cfg.runtime.out_dir,
        "data_id": did,
        "reason": reason,
    }


def write_results(out: Path, records: list[dict]) -> None:
    records = mark_best(records)
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def finished(r: dict) -> bool:
    """A point that trained to the end with a finite final val loss."""
    v = r.get("val_loss")
    return r.get("status") == "ok" and v is not None and math.isfinite(v)


def mark_best(records: list[dict]) -> list[dict]:
    """LR trials (records with a ``group``): ``best`` is True on the lowest finite final val
    loss of each group, False on the others (records without a group are left alone)."""
    best: dict[str, dict] = {}
    for r in records:
        g = r.get("group")
        if g is not None and finished(r) and (g not in best or r["val_loss"] < best[g]["val_loss"]):
            best[g] = r
    return [
        {**r, "best": best.get(r["group"]) is r} if r.get("group") is not None else r
        for r in records
    ]


def best_trials(records: list[dict], select: str = "best") -> tuple[list[dict], dict]:
    """The records the fits use (per LR-trial group only its best trial, or its failures when
    none finished) and a summary of the trials per group (fit.json ``lr_trials``). With
    ``select="parabola"`` the kept record of a group carries the loss at the estimated optimal
    LR (cgpt.train.fits.lr_optimum) as ``val_loss``; its own measured loss stays in
    ``val_loss_best_trial`` and the estimated LR in ``lr_opt``."""
    records = mark_best(records)
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("group") is not None:
            groups.setdefault(r["group"], []).append(r)
    keep = [
        r
        for r in records
        if r.get("group") is None or r["best"] or not any(finished(q) for q in groups[r["group"]])
    ]
    summary, warnings = {}, []
    optimum: dict[str, dict] = {}
    for g, trials in groups.items():
        trials = sorted(trials, key=lambda r: r.get("lr_mult") or 0)
        best = next((r for r in trials if r["best"]), None)
        if best and select == "parabola":
            optimum[g] = lr_optimum(trials)
        summary[g] = {
            "best": best["name"] if best else None,
            "best_lr": best["lr"] if best else None,
            "best_lr_mult": best["lr_mult"] if best else None,
            "optimum": optimum.get(g),
            "trials": [
                {
                    "name": r["name"],
                    "lr_mult": r.get("lr_mult"),
                    "lr": r.get("lr"),
                    "status": r.get("status"),
                    "val_loss": r.get("val_loss"),
                }  # fmt: skip
                for r in trials
            ],
        }
        mults: list[float] = [r["lr_mult"] for r in trials] if best else []  # tuned: all have one
        if best and len(mults) > 1 and best["lr_mult"] in (min(mults), max(mults)):
            edge = "largest" if best["lr_mult"] == max(mults) else "smallest"
            warnings.append(
                f"{g}: the best LR (x{best['lr_mult']:g}) is the {edge} of lr_grid; the optimum "
                "may lie outside it: widen lr_grid"
            )
    if optimum:
        keep = [
            {
                **r,
                "val_loss": optimum[r["group"]]["loss"],
                "val_loss_best_trial": r["val_loss"],
                "lr_opt": optimum[r["group"]]["lr"],
            }
            if r.get("group") in optimum and r.get("best")
            else r
            for r in keep
        ]
    return keep, {"groups": summary, "warnings": warnings, "select": select} if groups else {}
