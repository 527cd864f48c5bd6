"""Held-out targets in sweeps (``targets: [...]``, issue 27): trained once after the ladder,
left out of every fit, predicted by the ladder's law with the extrapolation ratio; and the
extrapolation ratio of every held-out prediction in fit.json."""

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import SWEEP_LAW as LAW
from helpers import SWEEP_SIZES, make_sweep_data, sweep_dict, write_sweep
from helpers import SWEEP_TARGET as TARGET

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.fits.fit import paper_law, prediction_check
from cgpt.train.fits.lr_optimum import lr_from_law, lr_law
from cgpt.train.sweeps.records import make_record, write_results
from cgpt.train.sweeps.sweep import fit_sweep_dir, parse_sweep, plan_points
from cgpt.train.sweeps.target_lr import law_text, with_target_lrs


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


@pytest.mark.parametrize("extra", [{"branches": {"at": [0.5, 1]}}])
def test_targets_refused_where_the_fit_cannot_hold_them_out(tmp_path, data, extra):
    with pytest.raises(ConfigError, match="targets go with a fixed-ratio sweep"):
        parse_sweep(sweep_dict(tmp_path, data, targets=[TARGET], **extra))


def test_mup_targets_train_at_the_transferred_base_lr(tmp_path, data):
    """lr: mup: a target needs no LR law; μP transfers the ladder's base LR to its width,
    exactly as to every ladder size (the model's mup section at the sweep's base width)."""
    d = sweep_dict(tmp_path, data, lr="mup", targets=[TARGET])
    d["plan"]["lr_base_width"] = 8
    points = plan_points(parse_sweep(d), 257)
    target = points[-1]
    assert target.target and target.cfg.model.n_embd == 32
    for p in points:
        assert p.cfg.model.mup is not None and p.cfg.model.mup.base_width == 8
        assert p.cfg.plan.lr == 3e-3 and p.cfg.plan.min_lr == pytest.approx(3e-4)
    assert target.cfg.model.mup == points[0].cfg.model.mup
    with pytest.raises(ConfigError, match="remove the sizes' and targets' lr"):
        parse_sweep({**d, "targets": [{**TARGET, "lr": 1e-3}]})
    assert parse_sweep(d).targets == parse_sweep({**d, "targets": [TARGET]}).targets  # as told


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
    # not trained yet (its run killed, or not started: no record): predicted before it
    # spends anything, at the FLOPs its point is planned to train
    write_results(out2, recs[:-1])
    for folder in (out, out2):
        lines = []
        fit = fit_sweep_dir(folder, n_boot=60, log=lines.append)
        assert fit["prediction"]["targets_pending"] == ["target-L3-d32-h2"]
        (t,) = fit["prediction"]["targets"]
        assert t["loss"] is None and t["rel_error"] is None and t["inside_pi95"] is None
        assert t["flops"] == recs[-1]["flops"] and t["predicted"] == pytest.approx(exact, rel=1e-3)
        assert t["pi95"][0] < t["predicted"] < t["pi95"][1]
        [line] = [x for x in lines if x.startswith("held-out target target-L3-d32-h2")]
        assert "x the largest fitted compute" in line and line.endswith("; not trained yet")


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


def test_mup_grid_tunes_the_base_lr_and_targets_train_at_its_law(tmp_path, data):
    """lr: mup with lr_grid: every size runs one trial per multiplier of the μP base LR; the
    targets train at the law of the sizes' best base LRs, which μP transfers to their width.
    Here every size is best at the same base LR (transfer held), so the law is that constant."""
    d = sweep_dict(tmp_path, data, lr="mup", lr_grid=[0.5, 1, 2], targets=[TARGET])
    d["plan"]["lr_base_width"] = 8
    sweep = parse_sweep(d)
    points = plan_points(sweep, 257)
    ladder = [p for p in points if not p.target]
    assert len(ladder) == 3 * 3 and all(p.group and p.cfg.model.mup for p in ladder)
    assert sorted({p.cfg.plan.lr for p in ladder}) == [1.5e-3, 3e-3, 6e-3]
    recs = []
    for p in ladder:  # loss quadratic in ln(base lr / 6e-3) at every size
        loss = 3.0 - p.cfg.plan.params / 1e5 + 0.2 * math.log(p.cfg.plan.lr / 6e-3) ** 2
        summary = {"val_loss": loss, "tokens": p.cfg.plan.tokens, "steps": p.cfg.plan.steps}
        recs.append(make_record(p, "ok", "d1", summary, wall_s=1.0))
    assert {r["lr_mode"] for r in recs} == {"mup"}
    replanned, law = with_target_lrs(sweep, points, 257, recs, strict=True)
    assert law is not None and law["form"] == "constant" and law["mup"] is True
    assert law["lr_ref"] == pytest.approx(6e-3, rel=1e-12)
    assert "optimal μP base LRs of 3 sizes" in law_text(law)
    target = replanned[-1]
    assert target.target and target.cfg.plan.lr == 6e-3  # the base LR; μP scales the rest
    assert target.cfg.model.mup == ladder[0].cfg.model.mup and target.cfg.model.n_embd == 32
    with pytest.raises(ConfigError, match="lr_select goes with lr: tuned, or lr: mup"):
        parse_sweep({**d, "lr_grid": None, "lr_select": "parabola"})
    assert parse_sweep({**d, "lr_select": "parabola"}).lr_select == "parabola"  # as told


def test_tuned_targets_refuse_an_lr_of_their_own(tmp_path, data):
    own = [{**TARGET, "lr": 1e-3}]
    with pytest.raises(ConfigError, match="ladder's LR law; remove the targets' lr"):
        parse_sweep(sweep_dict(tmp_path, data, lr="tuned", targets=own))
    sweep = parse_sweep(sweep_dict(tmp_path, data, lr="tuned", targets=[TARGET]))  # as told
    assert sweep.targets is not None and sweep.targets[0].lr is None


def _tuned_ladder(tmp_path, data):
    """A tuned sweep with a target, and records (as make_record writes them) of every ladder
    trial with a loss quadratic in ln(lr / optimum), optimum = 3e-3 x (N / 6000)^-0.3."""
    d = sweep_dict(tmp_path, data, lr="tuned", lr_select="parabola", targets=[TARGET])
    sweep = parse_sweep(d)
    points = plan_points(sweep, 257)
    recs = []
    for p in points:
        if not p.target:
            opt = 3e-3 * (p.cfg.plan.params / 6000) ** -0.3
            loss = 3.0 + 0.2 * math.log(p.cfg.plan.lr / opt) ** 2
            summary = {"val_loss": loss, "tokens": p.cfg.plan.tokens, "steps": p.cfg.plan.steps}
            recs.append(make_record(p, "ok", "d1", summary, wall_s=1.0))
    return sweep, points, recs


def test_tuned_targets_train_at_the_ladder_lr_law(tmp_path, data):
    sweep, points, recs = _tuned_ladder(tmp_path, data)
    assert points[-1].target and points[-1].cfg.plan.lr == 3e-3  # the rule, until the ladder ends
    replanned, law = with_target_lrs(sweep, points, 257, recs, strict=True)
    assert law is not None and law["exponent"] == pytest.approx(-0.3, abs=1e-9)
    assert len(law["points"]) == 3 and law["select"] == "parabola"
    target = replanned[-1]
    want = 3e-3 * (target.cfg.plan.params / 6000) ** -0.3
    assert lr_from_law(law, target.cfg.plan.params) == pytest.approx(want, rel=1e-9)
    assert target.cfg.plan.lr == float(f"{want:.4g}")  # 4 significant digits
    assert target.cfg.plan.min_lr == float(f"{target.cfg.plan.lr * 0.1:.3g}")
    assert [p.cfg for p in replanned[:-1]] == [p.cfg for p in points[:-1]]  # the ladder as it was


def test_tuned_targets_wait_for_every_ladder_size(tmp_path, data):
    sweep, points, recs = _tuned_ladder(tmp_path, data)
    largest = max(r["params"] for r in recs)
    partial = [r for r in recs if r["params"] != largest]
    assert with_target_lrs(sweep, points, 257, partial, strict=False) == (points, None)
    with pytest.raises(CgptError, match=r"L2-d16-h2 has no finished LR trial yet"):
        with_target_lrs(sweep, points, 257, partial, strict=True)


@pytest.mark.slow
def test_tuned_sweep_trains_its_target_at_the_lr_law(tmp_path, data, capsys):
    small = {"n_layer": 2, "n_embd": 24, "n_head": 2}
    d = sweep_dict(tmp_path, data, lr="tuned", lr_grid=[0.5, 2], targets=[small])
    d["sizes"] = [dict(s) for s in SWEEP_SIZES[1:]]  # 2 sizes x 2 LRs, then the target
    d["plan"]["warmup_tokens_per_param"] = 1
    path, out = write_sweep(tmp_path, d), tmp_path / "sweep"
    assert cli(["sweep", str(path), "--dry-run"]) == 0
    assert "they train at the LR law of the ladder's optimal LRs" in capsys.readouterr().out
    # both trials of the larger size fail (a file where their run folders go): no LR law yet
    largest = [p for p in plan_points(parse_sweep(d), 257) if not p.target][-2:]
    blocks = [Path(p.cfg.runtime.out_dir) for p in largest]
    for b in blocks:
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_text("not a folder")
    assert cli(["sweep", str(path), "--no-fit"]) == 2
    err = capsys.readouterr().err
    assert "no finished LR trial yet; finish the ladder first (--retry-failed reruns" in err
    for b in blocks:  # the cause removed, the printed suggestion followed literally
        b.unlink()
    assert cli(["sweep", str(path), "--no-fit", "--retry-failed"]) == 0
    assert "held-out targets train at the ladder's LR law: lr = " in capsys.readouterr().out
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all(r["status"] == "ok" for r in recs)
    law = lr_law([(r["params"], r["lr"]) for r in recs if r.get("best")])  # best of each size
    target = recs[-1]
    ran = yaml.safe_load((Path(target["run_dir"]) / "config.yaml").read_text())  # the trainer's
    assert ran["plan"]["lr"] == target["lr"] == float(f"{lr_from_law(law, target['params']):.4g}")
    assert cli(["sweep", str(path), "--no-fit"]) == 0  # the target planned again, unchanged
    assert capsys.readouterr().out.count("finished earlier") == 5
    assert cli(["sweep", str(path), "--dry-run"]) == 0  # now with the law's LR
    dry = capsys.readouterr().out
    assert "lr above is the LR law of the ladder's optimal LRs: lr = " in dry
    assert f"lr {target['lr']:.2e}" in dry.splitlines()[-3]
    with pytest.raises(CgptError, match="add 1 more"):  # two sizes: too few for the loss law
        fit_sweep_dir(out, n_boot=0, log=lambda m: None)
    fit = json.loads((out / "fit.json").read_text())  # written all the same
    assert fit["lr_trials"]["lr_law"]["exponent"] == pytest.approx(law["exponent"])
