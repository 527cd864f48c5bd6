"""Evaluation noise of a held-out prediction's ERROR (issue 27, docs/PREDICTION.md section 6):
    .venv/bin/python scripts/prediction_paired_noise.py runs/sweep-cpu-extrap-tuned
Every run is scored on the same val windows; resampling blocks of windows (about a document
for 256) with replacement, the same resample for every run, gives the spread of the error
that comes from which val text was drawn. Law: a pure power law (the sweep's fit found
c = 0) through each size's best trial. Seed replicates (seeds, target_seeds): a point's
window losses are its replicates' mean, as its loss is in the fit."""

import json
import sys

import numpy as np

from cgpt.train.fits.eval_noise import window_losses
from cgpt.train.sweeps.records import best_trials, finished
from cgpt.train.sweeps.seeds import aggregate_replicates

out = sys.argv[1] if len(sys.argv) > 1 else "runs/sweep-cpu-extrap-tuned"
recs = [json.loads(line) for line in open(f"{out}/results.jsonl")]
ladder, _ = aggregate_replicates([r for r in recs if not r["target"]])
kept, _ = best_trials(ladder, "best")
kept = sorted(kept, key=lambda r: r["flops"])
targets, _ = aggregate_replicates([r for r in recs if r["target"]])
targets = [r for r in targets if finished(r)]
dirs: dict[str, list[str]] = {}  # point -> its finished replicates' run folders
for r in recs:
    if finished(r):
        dirs.setdefault(r.get("replicate_of") or r["name"], []).append(r["run_dir"])
W = {r["name"]: np.mean([window_losses(d) for d in dirs[r["name"]]], 0) for r in kept + targets}
n = len(next(iter(W.values())))
x = np.log([r["flops"] for r in kept])
rng = np.random.default_rng(0)
for B in (1, 256):
    nb = n // B
    idx = rng.integers(0, nb, (1000, nb))
    means = {k: v[: nb * B].reshape(nb, B).mean(1)[idx].mean(1) for k, v in W.items()}
    ys = np.log(np.stack([means[r["name"]] for r in kept]))  # sizes x resamples
    for t in targets:
        errs = []
        for j in range(idx.shape[0]):
            b, a = np.polyfit(x, ys[:, j], 1)
            errs.append(np.exp(a + b * np.log(t["flops"])) / means[t["name"]][j] - 1)
        e = np.array(errs)
        lo, hi = np.percentile(e, [2.5, 97.5])
        print(
            f"block {B:3d} windows, {t['name']}: error {100 * e.mean():+.2f}% "
            f"sd {100 * e.std(ddof=1):.2f}% (2.5-97.5%: {100 * lo:+.2f} to {100 * hi:+.2f})"
        )
