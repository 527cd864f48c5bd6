"""Fitting a sweep folder: ``OUT/results.jsonl`` -> ``OUT/fit.json`` and the plots, and the
summary lines `cgpt sweep` prints. Which records each fit gets (best LR trials, the 1x
points of a branched sweep): docs/SCALING.md, Fitting a sweep folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.config import write_text_atomic
from cgpt.train.data.shards import open_token_data
from cgpt.train.fits.downstream import sweep_mappings
from cgpt.train.metrics import read_metrics
from cgpt.train.sweeps.config import parse_sweep
from cgpt.train.sweeps.points import plan_targets
from cgpt.train.sweeps.records import best_trials, finished
from cgpt.train.sweeps.seeds import aggregate_replicates
from cgpt.train.sweeps.seeds import summary_line as seeds_lines
from cgpt.train.sweeps.target_lr import law_text, lr_law_of_kept


def _interval_text(interval) -> str:
    return f" (95% interval {interval[0]:.1f}-{interval[1]:.1f})" if interval else ""


def _check_same_data(records: list[dict]) -> None:
    ids: dict[str | None, list[str]] = {}
    for r in records:
        if r.get("status") == "ok":
            ids.setdefault(r.get("data_id"), []).append(r["name"])
    if len(ids) > 1:
        groups = "; ".join(
            f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in ids.items()
        )
        raise CgptError(
            "the sweep's points were trained on different data or tokenizers "
            f"({groups}); losses on different data are not comparable, so no law is "
            "fitted: rerun the odd points on the sweep's data, or split the sweep"
        )


def fit_sweep_dir(out: str | os.PathLike, *, n_boot: int = 500, log=print) -> dict:
    """Fit the results in a sweep folder; write fit.json, scaling.png (and isoflop.png)."""
    from cgpt.train.fits.common import FitError  # scipy
    from cgpt.train.fits.plots import plot_isoflop, plot_scaling  # matplotlib, scipy

    out = Path(out)
    if not (out / "sweep.yaml").is_file():
        raise CgptError(
            f"{str(out)!r} is not a sweep folder (no sweep.yaml); run `cgpt sweep SWEEP.yaml` first"
        )
    meta = yaml.safe_load((out / "sweep.yaml").read_text()) or {}
    records = read_metrics(out / "results.jsonl")
    if not records:
        raise CgptError(f"{str(out)!r} has no results yet; run `cgpt sweep SWEEP.yaml`")
    _check_same_data(records)
    trained = [r for r in records if r.get("status") == "ok"]
    targets = [r for r in records if r.get("target")]  # held out of every fit
    records = [r for r in records if not r.get("target")]
    targets, _ = aggregate_replicates(targets)  # target_seeds: each target's mean
    records, seeds = aggregate_replicates(records)
    records, trials = best_trials(records, meta.get("lr_select") or "best")
    law = _lr_law(records, meta) if targets or meta.get("targets") else None
    floor = meta.get("loss_law", "paper") == "paper"
    fit = _fit(
        records,
        trained,
        kind=meta.get("kind", "tokens_per_param"),
        tokens_per_param=meta.get("tokens_per_param"),
        n_boot=n_boot,
        floor=floor,
    )
    fit["sweep"] = meta.get("name")
    noise = _seed_noise(seeds, records, targets, meta)
    _predict_targets(fit, targets, _planned_targets(meta), n_boot, floor, noise)

    mappings = sweep_mappings(records)
    if mappings["tasks"] or mappings["skipped"]:
        fit["downstream"] = mappings  # in-loop tasks (runtime.eval_tasks): acc from loss
    if trials:
        fit["lr_trials"] = {**trials, "lr_law": law} if law else trials
        fit["warnings"] += trials["warnings"]
    if seeds:
        fit["seeds"] = seeds
        fit["warnings"] += seeds["warnings"]
    write_text_atomic(out / "fit.json", json.dumps(fit, indent=1, default=float) + "\n")
    points = [
        {**r, "loss": r["val_loss"]}
        for r in records
        if r.get("status") == "ok"
        and r.get("val_loss") is not None
        and math.isfinite(r["val_loss"])
    ]
    title = f"{meta.get('name', out.name)}: loss vs compute"
    if points:  # no finished point (all failed): nothing to draw on log axes
        plot_scaling(points, fit, out / "scaling.png", title=title)
        if fit["kind"] == "isoflop":
            plot_isoflop(points, fit, out / "isoflop.png", title=f"{meta.get('name')}: IsoFLOP")
    if "n_opt_law" in (fit.get("approach1") or {}):
        from cgpt.train.fits.plots import plot_envelope  # matplotlib

        title = f"{meta.get('name', out.name)}: training-curve envelope"
        plot_envelope(fit, out / "envelope.png", title=title)
    for line in summarize_fit(fit):
        log(line)
    if fit.get("loss_law") is None:
        raise FitError(fit.get("loss_law_error", "no loss law fitted"))
    return fit


def _fit(
    records: list[dict],
    trained: list[dict],
    *,
    kind: str,
    tokens_per_param,
    n_boot: int,
    floor: bool,
) -> dict:
    """fit_results on the records each fit should see (docs/SCALING.md); ``trained``:
    every finished point, LR trials included (what the sweep cost)."""
    from cgpt.train.fits.fit import fit_results  # scipy

    opts = {"kind": kind, "tokens_per_param": tokens_per_param, "floor": floor}
    if not any(r.get("tokens_multiple") is not None for r in records):
        return fit_results(records, n_boot=n_boot, **opts)
    frontier = [r for r in records if r.get("tokens_multiple") == 1]
    fit = fit_results(frontier, n_boot=n_boot, **opts)
    every = fit_results(records, n_boot=0, **opts)
    fit["chinchilla"] = every["chinchilla"]  # approach 3: every D/N the branches tried
    fit["approach1"] = every["approach1"]  # approach 1: every branch's final point
    fit["warnings"] = [w for w in fit["warnings"] if not w.startswith("approach 1")] + [
        w for w in every["warnings"] if w.startswith("approach 1")
    ]
    seen = {e["name"] for e in fit["excluded"]}
    more = [e for e in every["excluded"] if e["name"] not in seen]
    if more:
        fit["excluded"] += more
        fit["warnings"].append(
            "excluded from the Chinchilla fit: "
            + "; ".join(f"{e['name']} ({e['reason']})" for e in more)
        )
    fit["branches"] = {
        "loss_law_points": [r["name"] for r in frontier],
        "chinchilla_points": len(records) - len(every["excluded"]),
        "flops": sum(float(r.get("flops") or 0) for r in trained),
        "cost_flops": sum(float(r.get("cost_flops") or 0) for r in trained),
    }
    return fit


def _lr_law(kept: list[dict], meta: dict) -> dict | None:
    """The LR law the targets of a tuned sweep trained at, from the ladder's ``kept`` best
    trials (None when the ladder has none)."""
    groups = {r["group"] for r in kept if r.get("group") is not None}  # LR trials' sizes
    if not groups:
        return None
    try:
        return lr_law_of_kept(kept, meta.get("lr_select") or "best", groups)
    except CgptError:
        return None


def _planned_targets(meta: dict) -> dict[str, float]:
    """Each held-out target of the saved sweep file -> its planned training FLOPs, so a
    target is predicted before it spends anything (one that has not started has no record).
    {} when the saved file can no longer be planned (an older schema, the data gone)."""
    if not meta.get("targets"):
        return {}
    raw = {k: v for k, v in meta.items() if k not in ("kind", "data_id")}
    try:
        sweep = parse_sweep(raw, "sweep.yaml")
        vocab = open_token_data(Path(sweep.data.path), verify="size").vocab_size
    except (CgptError, OSError):
        return {}
    return {p.replicate_of or p.name: p.flops() for p in plan_targets(sweep, vocab)}


def _seed_noise(seeds: dict, kept: list[dict], targets: list[dict], meta: dict) -> dict | None:
    """The noise the ladder's seed replicates measured, as a floor under the targets'
    intervals: one run's relative sd (pooled: the root mean square of every replicated
    trial's), the replicates a fitted point averages, and the seeds each target averages
    (its finished replicates, else as many as the sweep plans). None without replicates."""
    rel = [p["rel_sd"] for p in (seeds.get("points") or {}).values() if p["rel_sd"] is not None]
    if not rel:
        return None
    plan = len(meta.get("target_seeds") or [0])
    return {
        "seed_rel_sd": math.sqrt(sum(r * r for r in rel) / len(rel)),
        "fitted_replicates": min(
            ((r.get("replicates") or 1) for r in kept if finished(r)), default=1
        ),
        "target_replicates": {r["name"]: r.get("replicates") or 1 for r in targets if finished(r)},
        "planned_target_replicates": plan,
    }


def _predict_targets(
    fit: dict,
    targets: list[dict],
    planned: dict[str, float],
    n_boot: int,
    floor: bool,
    noise: dict | None = None,
) -> None:
    """fit["prediction"]["targets"]: every held-out target predicted by the law fitted on
    the ladder's frontier (cgpt.train.fits.fit.predict_targets), the trained ones against
    their measured loss; ``planned``: the FLOPs of targets that may have no record yet;
    ``noise`` (:func:`_seed_noise`): the seed noise under every interval."""
    from cgpt.train.fits.fit import FitError, predict_targets  # scipy

    flops = {**planned, **{r["name"]: r["flops"] for r in targets if r.get("flops")}}
    done = {r["name"]: r["val_loss"] for r in targets if finished(r)}
    names = list(dict.fromkeys([*planned, *(r["name"] for r in targets)]))
    if not names:
        return
    pred = fit.setdefault("prediction", {})
    pred["targets_pending"] = [n for n in names if n not in done]
    frontier = (fit.get("loss_law") or {}).get("frontier") or []
    known = [{"name": n, "flops": flops[n], "loss": done.get(n)} for n in names if n in flops]
    if not known or not frontier:
        return
    sd = noise["seed_rel_sd"] if noise else 0.0
    if noise:
        pred["seed_noise"] = noise  # the intervals' noise is at least what the seeds measured
        reps = noise["target_replicates"]
        for t in known:
            t["rel_sd"] = sd / math.sqrt(reps.get(t["name"], noise["planned_target_replicates"]))
    try:
        pred["targets"] = predict_targets(
            [f["flops"] for f in frontier],
            [f["loss"] for f in frontier],
            known,
            n_boot=min(n_boot, 200),
            floor=floor,
            noise=sd / math.sqrt(noise["fitted_replicates"]) if noise else 0.0,
        )
    except FitError as e:
        pred["targets_error"] = str(e)
        return
    spread = {r["name"]: r for r in targets if finished(r) and r.get("val_loss_sd") is not None}
    for t in pred["targets"]:
        if t["name"] in spread:  # target_seeds: the loss is the seeds' mean; their spread
            r = spread[t["name"]]
            t["seed_losses"], t["seed_rel_sd"] = r["val_loss_seeds"], r["val_loss_sd"] / t["loss"]


def _llo_text(p: dict, what: str) -> str:
    pi = p.get("pi95")
    text = (
        f"{what}: fitted on {p['fitted_on']} points, predicts {p['predicted']:.4f} at "
        f"C = {p['flops']:.3g} ({p['extrapolation_ratio']:.1f}x the largest fitted compute) "
        + (f"(95% interval {pi[0]:.4f}-{pi[1]:.4f})" if pi else "(no interval)")
    )
    if p["loss"] is None:
        return f"{text}; not trained yet"
    seeds = (
        f" (mean of {len(p['seed_losses'])} seeds, sd {100 * p['seed_rel_sd']:.2f}%)"
        if p.get("seed_losses")
        else ""
    )
    return f"{text} vs measured {p['loss']:.4f}{seeds}: error {100 * p['rel_error']:+.2f}%" + (
        "" if p.get("inside_pi95") is not False else " (OUTSIDE the interval)"
    )


def _lr_trial_lines(trials: dict) -> list[str]:
    """Each tuned size's trials and optimum, and the LR law its targets trained at."""
    lines = []
    for g, t in (trials.get("groups") or {}).items():
        tried = ", ".join(
            f"x{r['lr_mult']:g}: " + (f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-")
            for r in t["trials"]
        )
        best = f"best x{t['best_lr_mult']:g} (lr {t['best_lr']:.3g})" if t["best"] else "none ok"
        opt = t.get("optimum")
        if opt and opt["method"] == "parabola":
            best += f"; parabola optimum lr {opt['lr']:.3g}, loss {opt['loss']:.4f}"
        elif opt:
            best += f"; no parabola ({opt['reason']})"
        lines.append(f"lr trials {g}: {tried}; {best}")
    law = trials.get("lr_law")
    if law:
        lines.append(f"LR law of the tuned sizes (the targets' LR): {law_text(law)}")
    return lines


def summarize_fit(fit: dict) -> list[str]:
    lines = []
    law = fit.get("loss_law")
    if law:
        r2 = f"{law['r2']:.4f}" if law.get("r2") is not None else "n/a"
        floor = f" + {law['c']:.4f}" if law.get("form") != "power" else " (loss_law: power)"
        lines.append(
            f"loss law: L(C) = (C / {law['a']:.4g})^-{law['b']:.4f}{floor}  "
            f"(R² {r2}, RMSE {law['rmse']:.4f}, {law['n_points']} frontier points, "
            f"loss {'falls monotonically' if law['monotonic'] else 'NOT monotonic'} "
            "with compute)"
        )
    pred = fit.get("prediction") or {}
    llo, loo = pred.get("leave_largest_out"), pred.get("leave_one_out") or {}
    for tgt in pred.get("targets") or []:
        lines.append(_llo_text(tgt, f"held-out target {tgt['name']}"))
    unseen = set(pred.get("targets_pending") or []) - {t["name"] for t in pred.get("targets") or []}
    if unseen:
        names = [n for n in pred["targets_pending"] if n in unseen]
        lines.append(f"held-out targets not trained yet: {', '.join(names)}")
    if llo:
        lines.append(_llo_text({"extrapolation_ratio": 1.0, **llo}, "leave-largest-out"))
        if loo.get("mean_abs_error") is not None:
            lines.append(
                f"leave-one-out: mean |error| {loo['mean_abs_error']:.4f}, max "
                f"{100 * loo['max_abs_rel_error']:.2f}%, inside the 95% interval: "
                f"{loo['inside_pi95'] or 'n/a'}"
            )
    elif pred.get("skipped"):
        lines.append(f"held-out prediction: {pred['skipped']}")
    iso = fit.get("isoflop") or {}
    if "alpha" in iso:
        a_ci = (iso.get("alpha_ci95") or {}).get("interval")
        b_ci = (iso.get("beta_ci95") or {}).get("interval")
        lines.append(
            f"IsoFLOP: N_opt ∝ C^{iso['alpha']:.3f}"
            + (f" (95% interval {a_ci[0]:.3f}-{a_ci[1]:.3f})" if a_ci else "")
            + f", D_opt ∝ C^{iso['beta']:.3f}"
            + (f" (95% interval {b_ci[0]:.3f}-{b_ci[1]:.3f})" if b_ci else "")
            + f", tokens/param at the optimum ≈ {iso['tokens_per_param']:.1f}"
            + _interval_text((iso.get("tokens_per_param_ci95") or {}).get("interval"))
        )
    ch = fit.get("chinchilla") or {}
    if "E" in ch:
        lines.append(
            f"Chinchilla: L(N, D) = {ch['E']:.3f} + {ch['A']:.4g}/N^{ch['alpha']:.3f} + "
            f"{ch['B']:.4g}/D^{ch['beta']:.3f} (R² {ch['r2']:.4f})"
        )
    from cgpt.train.fits.approach1 import summary_lines as approach1_lines  # numpy, scipy

    lines += approach1_lines(fit.get("approach1") or {})
    lines += seeds_lines(fit.get("seeds") or {})
    for key, m in ((fit.get("downstream") or {}).get("tasks") or {}).items():
        held = m["leave_largest_out"]
        lines.append(
            f"in-loop {key} from loss: sigmoid on {m['fit']['n_points']} runs; without the "
            f"lowest-loss run it predicts {held['predicted']:.3f} there vs measured "
            f"{held['measured']:.3f} ({held['error_points']:+.1f} points)"
        )
    br = fit.get("branches")
    if br and br["flops"]:
        lines.append(
            f"branches: the loss law is fitted on the {len(br['loss_law_points'])} points at 1x "
            f"the planned tokens, Chinchilla L(N, D) on all {br['chinchilla_points']}; they cost "
            f"{br['cost_flops']:.3g} FLOPs, {br['cost_flops'] / br['flops']:.0%} of the "
            f"{br['flops']:.3g} that dedicated runs would"
        )
    lines += _lr_trial_lines(fit.get("lr_trials") or {})
    for w in fit.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines
