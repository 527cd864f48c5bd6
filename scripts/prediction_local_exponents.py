"""Where a loss curve bends (issue 27, docs/PREDICTION.md section 10): the local exponent of
val loss against compute between neighbouring sizes, on seed means, from sweep records.
    .venv/bin/python scripts/prediction_local_exponents.py \
        docs/prediction-sweep-cpu-extrap-mup2-results.jsonl docs/prediction-pilots7-results.jsonl
Every finished run with 4 heads, a batch of 32 sequences and base LR multiplier 1 counts,
ladder trial or target (``--n-head``, ``--batch``, ``--lr-mult`` pick others); runs of one
shape are averaged over their seeds. The exponent's standard error comes from the seeds'
spread (one run's relative sd, pooled over the shapes with two or more seeds)."""

import argparse
import json
import math
import sys
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results", nargs="+", help="results.jsonl files (sweep records)")
ap.add_argument("--lr-mult", type=float, default=1.0)
ap.add_argument("--n-head", type=int, default=4)
ap.add_argument("--batch", type=int, default=32, help="global batch in sequences")
args = ap.parse_args()

runs: dict[tuple, list[float]] = defaultdict(list)
flops: dict[tuple, float] = {}
data_ids: set[str] = set()
for path in args.results:
    for line in open(path):
        r = json.loads(line)
        if (
            r.get("status") != "ok"
            or (r.get("lr_mult") or 1.0) != args.lr_mult
            or (r["n_head"], r["global_batch_seqs"]) != (args.n_head, args.batch)
        ):
            continue
        key = (r["n_layer"], r["n_embd"])
        data_ids.add(r["data_id"])
        runs[key].append(r["val_loss"])
        flops[key] = r["flops"]

if len(data_ids) > 1:
    sys.exit(f"these records are from {len(data_ids)} different data sets: give one corpus's")
means = {k: sum(x) / len(x) for k, x in runs.items()}
rel_var = [
    sum((v / means[k] - 1) ** 2 for v in x) / (len(x) - 1) for k, x in runs.items() if len(x) > 1
]
sd = math.sqrt(sum(rel_var) / len(rel_var)) if rel_var else None
if sd is None:
    print("no shape has two seeds: the exponents have no standard error")
else:
    print(f"one run's seed sd (pooled over {len(rel_var)} shapes): {100 * sd:.2f}%")
prev = None
for key in sorted(runs, key=lambda k: flops[k]):
    loss = means[key]
    n = len(runs[key])
    line = f"L{key[0]}-d{key[1]}: C {flops[key]:.3e}  mean {loss:.4f} ({n} seed{'s' * (n > 1)})"
    if prev:
        dx = math.log(flops[key] / prev[0])
        line += f"  local exponent {math.log(loss / prev[1]) / dx:+.3f}"
        if sd is not None:
            line += f" ± {sd * math.sqrt(1 / n + 1 / prev[2]) / dx:.3f}"
    print(line)
    prev = (flops[key], loss, n)
