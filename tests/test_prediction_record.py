"""The CPU extrapolation recorded in docs/PREDICTION.md, re-checked from the sweep's own
results file (docs/prediction-sweep-cpu-extrap-l4-results.jsonl, copied as `cgpt sweep`
wrote it) without retraining: the law fitted on the ladder's seed means, its prediction for
the held-out target at 10.2x the largest fitted compute, and the measured miss. A change to
the fitting code that moves these numbers fails here and must update the doc."""

import json
import statistics
from pathlib import Path

import pytest

from cgpt.train.fits.fit import fit_paper_law

RECORD = (
    Path(__file__).resolve().parent.parent / "docs" / "prediction-sweep-cpu-extrap-l4-results.jsonl"
)


def _ladder_and_target():
    recs = [json.loads(line) for line in RECORD.read_text().splitlines()]
    assert all(r["status"] == "ok" for r in recs) and len(recs) == 9
    groups: dict[str, list[dict]] = {}
    for r in recs:
        if not r["target"]:
            groups.setdefault(r["replicate_of"], []).append(r)
    ladder = sorted(
        (g[0]["flops"], statistics.fmean(r["val_loss"] for r in g)) for g in groups.values()
    )
    [target] = [r for r in recs if r["target"]]
    return ladder, target


def test_recorded_extrapolation_is_reproduced_from_the_results_file():
    ladder, target = _ladder_and_target()
    assert [len(ladder), target["name"]] == [4, "target-L4-d72-h4"]
    ratio = target["flops"] / ladder[-1][0]
    fit = fit_paper_law(
        [c for c, _ in ladder], [v for _, v in ladder], predict_at=[target["flops"]]
    )
    [pred] = fit["predictions"]
    assert ratio == pytest.approx(10.21, abs=0.01)
    assert (fit["b"], fit["c"]) == pytest.approx((0.3516, 2.3724), abs=2e-3)
    assert pred["loss"] == pytest.approx(2.7857, abs=2e-3)  # docs/PREDICTION.md, section 5
    assert target["val_loss"] == pytest.approx(2.4146, abs=1e-4)
    assert pred["loss"] / target["val_loss"] - 1 == pytest.approx(0.1537, abs=2e-3)
    lo, hi = pred["pi95"]
    assert not lo <= target["val_loss"] <= hi  # the recorded miss: outside the interval
