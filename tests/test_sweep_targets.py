"""Held-out targets in sweeps (``targets: [...]``, issue 27): trained once after the ladder,
left out of every fit, predicted by the ladder's law with the extrapolation ratio; and the
extrapolation ratio of every held-out prediction in fit.json."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import make_sweep_data, sweep_dict

from cgpt.model.errors import ConfigError
from cgpt.train.fits.fit import paper_law, prediction_check
from cgpt.train.sweeps.records import make_record, write_results
from cgpt.train.sweeps.sweep import fit_sweep_dir, parse_sweep, plan_points

TARGET = {"n_layer": 3, "n_embd": 32, "n_head": 2}
LAW = dict(a=1e6, b=0.12, c=1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sweep_data(tmp_path_factory.mktemp("data"))


def test_targets_plan_last_once_at_the_first_seed(tmp_path, data):
    sweep = parse_sweep(sweep_dict(tmp_path, data, seeds=[7, 8], targets=[TARGET]))
    points = plan_points(sweep, 257)
    assert points[-1].name == "target-L3-d32-h2" and points[-1].target
    assert points[-1].cfg.runtime.seed == 7 and points[-1].seed == 7
    assert points[-1].cfg.runtime.out_dir.endswith("/runs/target-L3-d32-h2")
    assert sum(p.target for p in points) == 1 and len(points) == 2 * 3 + 1
    assert all(p.cfg.plan.params < points[-1].cfg.plan.params for p in points[:-1])


@pytest.mark.parametrize("extra", [{"lr": "tuned"}, {"branches": {"at": [0.5, 1]}}])
def test_targets_refused_where_the_fit_cannot_hold_them_out(tmp_path, data, extra):
    with pytest.raises(ConfigError, match="targets go with a fixed-ratio sweep"):
        parse_sweep(sweep_dict(tmp_path, data, targets=[TARGET], **extra))


def _sweep_folder(tmp_path, data, target_loss=None):
    """A sweep folder as `cgpt sweep` leaves it: sweep.yaml and results.jsonl of records made
    by the sweep's own make_record, each run's summary giving a loss on a known law."""
    d = sweep_dict(tmp_path, data, targets=[TARGET])
    d["sizes"] += [
        {"n_layer": 2, "n_embd": 8, "n_head": 2},
        {"n_layer": 2, "n_embd": 12, "n_head": 2},
    ]
    sweep = parse_sweep(d)
    out = tmp_path / "sweep"
    out.mkdir(parents=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump({**d, "kind": "tokens_per_param"}))
    recs = []
    for p in plan_points(sweep, 257):
        loss = float(paper_law(p.flops(), **LAW))
        if p.target:
            if target_loss is None:
                recs.append(make_record(p, "failed", "d1", reason="killed"))
                continue
            loss = target_loss
        summary = {"val_loss": loss, "tokens": p.cfg.plan.tokens, "steps": p.cfg.plan.steps}
        recs.append(make_record(p, "ok", "d1", summary, wall_s=1.0))
    write_results(out, recs)
    return out, recs


def test_fit_predicts_the_target_with_its_extrapolation_ratio(tmp_path, data):
    out, recs = _sweep_folder(tmp_path, data, target_loss=None)
    exact = float(paper_law(recs[-1]["flops"], **LAW))
    out2, recs = _sweep_folder(tmp_path / "b", data, target_loss=exact * 1.01)
    lines = []
    fit = fit_sweep_dir(out2, n_boot=50, log=lines.append)
    assert [f["name"] for f in fit["loss_law"]["frontier"]] == [
        r["name"] for r in sorted(recs[:-1], key=lambda r: r["flops"])
    ]  # the target is not fitted
    (t,) = fit["prediction"]["targets"]
    ladder_max = max(r["flops"] for r in recs[:-1])
    assert t["extrapolation_ratio"] == pytest.approx(recs[-1]["flops"] / ladder_max)
    assert t["extrapolation_ratio"] > 1
    assert t["predicted"] == pytest.approx(exact, rel=1e-3)
    assert t["rel_error"] == pytest.approx(1 / 1.01 - 1, abs=2e-3)
    assert any(
        line.startswith("held-out target target-L3-d32-h2") and "x the largest" in line
        for line in lines
    )
    assert json.loads((out2 / "fit.json").read_text())["prediction"]["targets"][0]["name"] == (
        "target-L3-d32-h2"
    )
    # not trained yet: the fit says so and predicts nothing for it
    lines = []
    fit = fit_sweep_dir(out, n_boot=0, log=lines.append)
    assert fit["prediction"]["targets_pending"] == ["target-L3-d32-h2"]
    assert "targets" not in fit["prediction"]
    assert any("not trained yet" in line for line in lines)


def test_every_held_out_prediction_states_its_extrapolation_ratio():
    c = [1e9, 2e9, 4e9, 8e9, 3.2e10]
    y = list(paper_law(c, **LAW))
    check = prediction_check(c, y, n_boot=0)
    assert check["leave_largest_out"]["extrapolation_ratio"] == pytest.approx(4.0)
    ratios = [p["extrapolation_ratio"] for p in check["leave_one_out"]["points"]]
    assert ratios == pytest.approx([1e9 / 3.2e10, 2e9 / 3.2e10, 4e9 / 3.2e10, 8e9 / 3.2e10, 4.0])


def test_sweep_fits_its_own_accuracy_mapping_from_in_loop_tasks(tmp_path, data):
    """Runs whose metrics rows carry in-loop task scores (eval/TASK/METRIC next to val_loss,
    as cgpt.train.eval.inloop gives the trainer) get a sweep-own acc(L) mapping in fit.json,
    checked by leaving the lowest-loss run out."""
    from cgpt.train.fits.downstream import sigmoid_acc
    from cgpt.train.metrics import MetricsLogger

    out, recs = _sweep_folder(tmp_path, data, target_loss=2.0)
    for r in recs:
        if r["target"]:
            continue
        Path(r["run_dir"]).mkdir(parents=True)  # the trainer's run folder
        log = MetricsLogger(r["run_dir"], True, 10, 0)
        acc = float(sigmoid_acc(r["val_loss"], 0.25, 0.9, 8.0, 1.45))
        log.log({"step": 10, "val_loss": r["val_loss"], "eval/arc_easy/acc": acc})
        log.log({"step": 10, "eval/lambada_openai/acc": 0.1})  # one row: fewer than 5 runs
    lines: list[str] = []
    fit = fit_sweep_dir(out, n_boot=0, log=lines.append)
    assert any(line.startswith("in-loop arc_easy/acc from loss") for line in lines)
    ds = fit["downstream"]
    task = ds["tasks"]["arc_easy/acc"]
    assert task["fit"]["n_points"] == 5 and task["fit"]["floor"] == 0.25
    assert abs(task["leave_largest_out"]["error_points"]) < 0.5
    assert "this sweep's val loss" in ds["note"]
    assert "lambada_openai/acc" not in ds["tasks"]
