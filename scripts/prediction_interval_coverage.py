"""How often a held-out prediction's 95% interval covers a new run, with and without the
seed-measured noise floor (issue 27, docs/SCALING.md, Held-out targets):
    .venv/bin/python scripts/prediction_interval_coverage.py [SIMULATIONS]
Five ladder points on a pure power law (the sixth attempt's), each with relative noise
0.5%, a new run 30x beyond the largest; 100 simulations take about a minute."""

import sys

import numpy as np

from cgpt.train.fits.fit import fit_paper_law, paper_law

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
c = np.logspace(11.5, 12.3, 5)
far, sd = 30 * c[-1], 0.005
truth = paper_law(far, 4e16, 0.106, 0.0)
rng = np.random.default_rng(0)
hits = {"residuals alone": 0, "seed noise floor": 0}
for i in range(n):
    y = paper_law(c, 4e16, 0.106, 0.0) * (1 + rng.normal(0, sd, c.size))
    new = truth * (1 + rng.normal(0, sd))
    for key, noise in (("residuals alone", 0.0), ("seed noise floor", sd)):
        fit = fit_paper_law(
            c, y, n_boot=100, seed=i, predict_at=[far], floor=False, noise=noise, new_noise=[noise]
        )
        lo, hi = fit["predictions"][0]["pi95"]
        hits[key] += int(lo <= new <= hi)
for key, h in hits.items():
    print(f"{key}: the 95% interval covered the new run {h} times in {n}")
