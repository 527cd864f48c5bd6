"""Scaling sweeps: many small runs -> ``results.jsonl`` -> fitted laws (``fit.json``) and plots.

A sweep file (YAML, validated, unknown keys refused) names one data folder + tokenizer, the
model sizes, and either a fixed tokens-per-parameter ratio (the Cerebras-GPT way) or IsoFLOP
budgets (Chinchilla approach 2). Every point is a normal run: planned by the planner's rules
(``cgpt.train.plan.planner.plan_for_shape``: tokens = tpp × params, steps, warmup, decay, eps, init)
with the sweep's explicit small-model batch and LR (the published rules give LRs for 100M+
models), written as a run config to ``OUT/configs/NAME.yaml`` and trained by
``python -m cgpt.train`` in a subprocess into ``OUT/runs/NAME/`` — so a crashing or diverging
point cannot take the sweep down. The sweep folder::

    OUT/sweep.yaml      the resolved sweep definition (what `cgpt sweep fit` reads)
    OUT/configs/*.yaml  one run config per point        OUT/logs/*.log  each point's output
    OUT/runs/*/         one run folder per point         OUT/results.jsonl  one line per point
    OUT/fit.json        fits (cgpt.train.fits.fit)            OUT/scaling.png, OUT/isoflop.png

Learning rates (``lr:`` in the sweep file):

* ``fixed`` (default): one run per size at ``plan.lr`` (× the width rule
  ``(lr_base_width / n_embd)^lr_width_exponent``, or the size's own ``lr``);
* ``tuned``: one run (a *trial*) per size and multiplier in ``lr_grid`` (default
  [0.5, 1, 2]) around that LR, named ``SHAPE-lrxM``; results.jsonl records every trial
  (``group`` = the size, ``lr_mult``, ``best``) and the fits use only the best trial per size
  (lowest final val loss; fit.json ``lr_trials`` lists them and warns when the best sits at
  the edge of the grid);
* ``mup``: μP (cgpt.train.plan.mup.apply_mup, base width ``plan.lr_base_width``) with
  ``plan.lr`` as the base LR, transferred to every width (hidden matrices at LR/m,
  m = n_embd / base width). Restriction: every width must be at least the base width (μP
  transfers the base model's tuning to wider models, not narrower ones).

Warmup: the planner's rule (375M tokens, capped at 20% of the steps, which is what every
small point gets) unless ``plan.warmup_tokens_per_param`` sets warmup tokens = k × params
(warmup proportional to model size; Porian et al. 2024, arXiv 2406.19146, name a warmup too
long for small models as one cause of the Kaplan/Chinchilla discrepancy; k = 1 is cgpt's
choice, not a constant read from the paper). Batch: ``plan.global_batch_seqs``, or, when it
is left out, the batch law of ``plan.recipe`` (``deepseek``: DeepSeek LLM's
B_opt = 0.2920·C^0.3271 tokens, docs/REFERENCE.md, Related scaling laws).

Resumable: a point whose run folder has ``summary.json`` with status ``completed`` is
skipped; a point with a run folder but no completed summary (killed, preempted, stopped) is
continued with ``--resume`` from its newest checkpoint; a failed point (it diverged or
crashed) is recorded with its reason and skipped on later runs unless ``--retry-failed``.
If the data folder is missing and the sweep has ``data.prepare``, the sweep trains the
tokenizer and prepares the data itself first (``cgpt tokenizer train`` + ``cgpt prepare``).

Schedule: ``plan.decay`` (linear | cosine | wsd; default the planner's rule) and, for wsd,
``plan.cooldown_fraction`` apply to every point. ``branches: {at: [0.5, 1, 2, 4],
cooldown_fraction: 0.2}`` (with ``plan.decay: wsd`` and ``plan.warmup_tokens_per_param``)
trains one warmup-stable-decay run per size (and LR trial) to the largest multiple of its
planned tokens and every smaller multiple as a cooldown branch of it, at the price of the
cooldown (cgpt.train.sweeps.branches). results.jsonl records each point's ``flops``
(as if trained alone) and ``cost_flops`` (what the sweep spent on it), ``branch_of`` and
``tokens_multiple``; the loss law is fitted on the 1x points, Chinchilla's L(N, D) on all.

Modules: the sweep file (sweep_config), its data (sweep_data), planning the points
(sweep_points, sweep_branches), training one point (sweep_train), result records
(sweep_records), fitting a sweep folder (sweep_fit); this one runs a sweep.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.config import config_diff, write_text_atomic
from cgpt.train.lock import FolderLock
from cgpt.train.loop.metrics import read_metrics
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
    points = plan_points(sweep, dry_run_vocab(sweep, log))
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
    _check_unchanged(out, points, sweep)  # a refusal before the lock leaves out as it was
    with FolderLock(out, "sweep folder"):  # one sweep per folder, as one trainer per run
        _check_unchanged(out, points, sweep)  # again: another sweep may have written since
        return _run_locked(sweep, path, out, data_id(data), points, retry_failed, fit, log)


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
    for i, p in enumerate(points, 1):
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
        if rec["status"] == "interrupted":
            raise CgptError(
                f"point {p.name} was interrupted; run `cgpt sweep {path}` again to "
                "continue it from its checkpoint"
            )
    result = {
        "out_dir": str(out),
        "results": [records[p.name] for p in points],
        "fit": None,
        "fit_error": None,
    }
    if fit:
        from cgpt.train.fits.fit import FitError

        try:
            result["fit"] = fit_sweep_dir(out, log=log)
        except FitError as e:
            result["fit_error"] = str(e)
            log(f"fit: {e}")
    return result
