"""Running a scaling sweep: every point trained as a normal run in a subprocess, resumably,
into one locked sweep folder, then fitted and plotted (``results.jsonl`` -> ``fit.json``).
The sweep file, the folder layout, LR modes, warmup and branches: docs/SCALING.md, Sweeps.
This module also re-exports the package's public names for callers and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.config import config_diff, write_text_atomic
from cgpt.train.exit_codes import Preempted
from cgpt.train.lock import FolderLock
from cgpt.train.metrics import read_metrics
from cgpt.train.sweeps.branches import (
    describe_points,
    prepare_branch,
    prepare_ready_branches,
)
from cgpt.train.sweeps.config import (
    DEFAULT_LR_GRID,
    PER_POINT_FORBIDDEN,
    BranchSpec,
    IsoFlopSpec,
    PrepareSpec,
    SizeSpec,
    SweepConfig,
    SweepData,
    SweepModel,
    SweepPlan,
    load_sweep,
    parse_sweep,
)
from cgpt.train.sweeps.data import data_id, dry_run_vocab, ensure_data, tokenizer_dir
from cgpt.train.sweeps.fit import fit_sweep_dir, summarize_fit
from cgpt.train.sweeps.points import Point, plan_point, plan_points
from cgpt.train.sweeps.records import best_trials, make_record, mark_best, write_results
from cgpt.train.sweeps.target_lr import law_text, with_target_lrs
from cgpt.train.sweeps.train import run_point, run_summary

__all__ = [
    "DEFAULT_LR_GRID",
    "PER_POINT_FORBIDDEN",
    "BranchSpec",
    "IsoFlopSpec",
    "Point",
    "PrepareSpec",
    "SizeSpec",
    "SweepConfig",
    "SweepData",
    "SweepModel",
    "SweepPlan",
    "best_trials",
    "data_id",
    "dry_run_vocab",
    "ensure_data",
    "fit_sweep_dir",
    "load_sweep",
    "mark_best",
    "parse_sweep",
    "plan_point",
    "plan_points",
    "run_point",
    "run_sweep",
    "summarize_fit",
    "tokenizer_dir",
    "write_results",
]


def _check_unchanged(out: Path, points: list[Point], sweep: SweepConfig) -> None:
    """A sweep folder's finished points must still match the sweep file: else refuse."""
    saved_sweep = out / "sweep.yaml"
    if saved_sweep.is_file():
        old_spec = (yaml.safe_load(saved_sweep.read_text()) or {}).get("branches")
        new_spec = sweep.model_dump(mode="json")["branches"]
        if old_spec != new_spec:
            raise CgptError(
                f"sweep folder {str(out)!r} was run with branches {old_spec}, the sweep file "
                f"now says {new_spec}; restore the sweep file, or set a new out_dir for the "
                "changed sweep"
            )
    for p in points:
        saved = out / "configs" / f"{p.name}.yaml"
        if not saved.is_file():
            continue
        old = yaml.safe_load(saved.read_text()) or {}
        new = p.cfg.to_dict()
        diff = config_diff(old, new)
        if diff:
            raise CgptError(
                f"sweep folder {str(out)!r} already holds point {p.name} with a "
                f"different {', '.join(diff)}; restore the sweep file, or set a new "
                "out_dir for the changed sweep"
            )


def _dry_run(sweep: SweepConfig, out: Path, log) -> dict:
    """Say what a run would do and write nothing: no tokenizer, data or sweep folder."""
    vocab = dry_run_vocab(sweep, log)
    done = read_metrics(out / "results.jsonl")
    points, law = with_target_lrs(sweep, plan_points(sweep, vocab), vocab, done, strict=False)
    if sweep.branches is not None:
        for line in describe_points(points):
            log(line)
    else:
        for p in points:
            pl = p.cfg.plan
            log(
                f"{p.name:28s} params {pl.params:>11,}  tokens {pl.tokens:>12,}  steps "
                f"{pl.steps:>6,}  lr {pl.lr:.2e}  FLOPs {pl.train_flops:.3e}"
            )
    if law is not None:
        log(f"the targets' lr above is the LR law of the ladder's optimal LRs: {law_text(law)}")
    elif sweep.tunes_lr and sweep.targets:
        log(
            "the targets' lr above is the sweep's rule: they train at the LR law of the "
            "ladder's optimal LRs, known once the ladder has finished"
        )
    log(
        f"dry run: nothing written; a real run trains these {len(points)} points into "
        f"{out}/runs/ and writes {out}/results.jsonl"
    )
    return {"out_dir": str(out), "results": [], "fit": None, "fit_error": None}


def run_sweep(
    path: str | os.PathLike,
    *,
    retry_failed: bool = False,
    dry_run: bool = False,
    fit: bool = True,
    log=print,
) -> dict:
    """Run (or continue) every point of a sweep, then fit and plot. Returns
    {"out_dir", "results": [...], "fit": dict | None, "fit_error": str | None}."""
    sweep = load_sweep(path)
    out = Path(sweep.out_dir)
    if dry_run:
        return _dry_run(sweep, out, log)
    data = ensure_data(sweep, log)
    points = plan_points(sweep, data.vocab_size)
    done = read_metrics(out / "results.jsonl")
    points, _ = with_target_lrs(sweep, points, data.vocab_size, done, strict=False)
    _check_unchanged(out, points, sweep)  # a refusal before the lock leaves out as it was
    with FolderLock(out, "sweep folder"):  # one sweep per folder, as one trainer per run
        _check_unchanged(out, points, sweep)  # again: another sweep may have written since
        return _run_locked(sweep, path, out, data_id(data), points, retry_failed, fit, log)


def _at_lr_law(sweep: SweepConfig, out: Path, points: list[Point], records: dict, log) -> dict:
    """lr: tuned with targets, once the ladder is done: the targets planned at the ladder's LR
    law (by name), checked against what the folder holds."""
    vocab = points[0].cfg.model.vocab_size
    replanned, law = with_target_lrs(sweep, points, vocab, list(records.values()), strict=True)
    targets = {q.name: q for q in replanned if q.target}
    assert law is not None  # strict, tuned, with targets
    log(f"held-out targets train at the ladder's LR law: {law_text(law)}")
    _check_unchanged(out, list(targets.values()), sweep)
    return targets


def _run_locked(
    sweep: SweepConfig, path, out: Path, did: str, points: list[Point], retry_failed, fit, log
) -> dict:
    old = {r["name"]: r for r in read_metrics(out / "results.jsonl")}
    records = {p.name: old[p.name] for p in points if p.name in old}
    stale = [n for n, r in records.items() if r.get("status") == "ok" and r.get("data_id") != did]
    if stale:
        raise CgptError(
            f"the data in {sweep.data.path!r} changed since {', '.join(stale[:3])} "
            "trained on it (different shards or tokenizer); their losses would not be "
            "comparable with new points: restore the data or use a new out_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / "sweep.yaml",
        yaml.safe_dump(
            {**sweep.model_dump(mode="json"), "kind": sweep.kind, "data_id": did}, sort_keys=False
        ),
    )
    by_name = {p.name: p for p in points}
    branches = {p.name: [q for q in points if q.branch_of == p.name] for p in points}
    at_law: dict[str, Point] | None = None
    for i, p in enumerate(points, 1):
        if p.target and sweep.tunes_lr:
            at_law = at_law or _at_lr_law(sweep, out, points, records, log)
            p = at_law[p.name]
        rec, head = records.get(p.name), f"[{i}/{len(points)}] {p.name}"
        done = run_summary(Path(p.cfg.runtime.out_dir)) or {}
        if rec and rec["status"] == "ok" and done.get("status") == "completed":
            log(f"{head}: finished earlier (val_loss {rec['val_loss']:.4f}), skipped")
            prepare_ready_branches(p, branches[p.name], log)  # if a kill came in between
            continue
        if rec and rec["status"] == "failed" and not retry_failed:
            log(f"{head}: failed earlier ({rec['reason']}), skipped; --retry-failed reruns it")
            continue
        why = prepare_branch(p, by_name[p.branch_of]) if p.branch_of else None
        if why:
            rec = make_record(p, "failed", did, reason=why)
        else:
            pl = p.cfg.plan
            what = (
                f"cooldown branch of {p.branch_of} from step {p.branch_step} to {pl.steps}"
                if p.branch_of
                else f"{pl.params:,} params, {pl.tokens:,} tokens, {pl.steps} steps"
            )
            log(f"{head}: {what} ...")
            prepare_ready_branches(p, branches[p.name], log)  # from an earlier process
            rec = run_point(p, out, did, log)
            prepare_ready_branches(p, branches[p.name], log)
        records[p.name] = rec
        write_results(out, [records[q.name] for q in points if q.name in records])
        msg = (
            f"val_loss {rec['val_loss']:.4f}"
            if rec["status"] == "ok"
            else f"{rec['status'].upper()}: {rec['reason']}"
        )
        log(f"{head}: {msg} ({rec['wall_s'] or 0:.0f} s)")
        if rec["status"] == "interrupted":  # with a checkpoint: exit PREEMPTED, as cgpt train
            stop = Preempted if rec["steps"] is not None else CgptError
            raise stop(
                f"point {p.name} was interrupted; run `cgpt sweep {path}` again to "
                "continue it from its checkpoint"
            )
    result: dict[str, Any] = {
        "out_dir": str(out),
        "results": [records[p.name] for p in points],
        "fit": None,
        "fit_error": None,
    }
    if fit:
        from cgpt.train.fits.common import FitError  # scipy

        try:
            result["fit"] = fit_sweep_dir(out, log=log)
        except FitError as e:
            result["fit_error"] = str(e)
            log(f"fit: {e}")
    return result
