"""Held-out targets at several seeds (``target_seeds``, issue 27): each target trained once
per seed, its measured loss the seeds' mean, their spread printed beside the error."""

import json
import statistics

import pytest
import yaml
from helpers import SWEEP_LAW as LAW
from helpers import SWEEP_TARGET as TARGET
from helpers import make_sweep_data, sweep_dict, write_sweep

from cgpt.launch.cli import main as cli
from cgpt.model.errors import ConfigError
from cgpt.train.fits.fit import paper_law
from cgpt.train.sweeps.records import make_record, write_results
from cgpt.train.sweeps.sweep import fit_sweep_dir, parse_sweep, plan_points

OTHER = {"n_layer": 3, "n_embd": 40, "n_head": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sweep_data(tmp_path_factory.mktemp("data"))


def test_each_target_trains_at_every_target_seed_after_the_first_round(tmp_path, data):
    d = sweep_dict(tmp_path, data, seeds=[7, 8], targets=[TARGET, OTHER], target_seeds=[7, 9])
    points = plan_points(parse_sweep(d), 257)
    targets = [p for p in points if p.target]
    assert all(not p.target for p in points[: -len(targets)])  # after the whole ladder
    names = ["target-L3-d32-h2", "target-L3-d40-h2", "target-L3-d32-h2-s9", "target-L3-d40-h2-s9"]
    assert [p.name for p in targets] == names  # one of each size first, then the replicates
    assert [p.cfg.runtime.seed for p in targets] == [p.seed for p in targets] == [7, 7, 9, 9]
    assert [p.replicate_of for p in targets] == [n.removesuffix("-s9") for n in names]
    assert [p.cfg.runtime.out_dir for p in targets] == [f"{tmp_path}/sweep/runs/{n}" for n in names]
    assert targets[0].cfg.plan == targets[2].cfg.plan  # the same run but for its seed
    default = [p for p in plan_points(parse_sweep({**d, "target_seeds": None}), 257) if p.target]
    assert [(p.name, p.seed, p.replicate_of) for p in default] == [
        ("target-L3-d32-h2", 7, None),
        ("target-L3-d40-h2", 7, None),
    ]  # once each, at the first of seeds, as before


@pytest.mark.parametrize(
    ("change", "refusal", "as_told"),
    [
        ({"targets": None}, "target_seeds goes with targets", {"target_seeds": None}),
        ({"target_seeds": [7, 7]}, "target_seeds must list different seeds", {"target_seeds": [7]}),
        ({"runtime": {"seed": 3}}, "runtime.seed is set per target by target_seeds", {}),
    ],
)
def test_target_seeds_refusals_are_followed_as_told(tmp_path, data, change, refusal, as_told):
    d = sweep_dict(tmp_path, data, targets=[TARGET], target_seeds=[7, 8])
    bad = {**d, **change}
    if "runtime" in change:
        bad["runtime"] = {**d["runtime"], **change["runtime"]}
    with pytest.raises(ConfigError, match=refusal):
        parse_sweep(bad)
    fixed = {**bad, **as_told}
    fixed["runtime"] = {k: v for k, v in bad["runtime"].items() if k != "seed"}
    parse_sweep(fixed)


def _folder(tmp_path, data, factors: dict[int, float | None]):
    """A sweep folder as `cgpt sweep` leaves it when target_seeds was added after the target
    trained at its first seed: that record from the plan without target_seeds (no
    replicate_of), the others from the plan with it. Ladder losses on LAW; ``factors``: seed
    -> the target's loss as a multiple of LAW's (None: no record yet)."""
    d = sweep_dict(tmp_path, data, targets=[TARGET], target_seeds=list(factors))
    d["sizes"] += [
        {"n_layer": 2, "n_embd": 8, "n_head": 2},
        {"n_layer": 2, "n_embd": 12, "n_head": 2},
    ]
    out = tmp_path / "sweep"
    out.mkdir(parents=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump({**d, "kind": "tokens_per_param"}))
    before = plan_points(parse_sweep({**d, "target_seeds": None}), 257)
    first = {p.name: p for p in before if p.target}
    recs = []
    for p in plan_points(parse_sweep(d), 257):
        loss = float(paper_law(p.flops(), **LAW))
        if p.target:
            if factors[p.seed] is None:
                continue
            loss *= factors[p.seed]
            p = first.get(p.name, p)  # as the sweep wrote it before target_seeds
        summary = {"val_loss": loss, "tokens": p.cfg.plan.tokens, "steps": p.cfg.plan.steps}
        recs.append(make_record(p, "ok", "d1", summary, wall_s=1.0))
    write_results(out, recs)
    return out, recs


def test_fit_reads_each_target_against_its_seeds_mean(tmp_path, data):
    out, _ = _folder(tmp_path / "a", data, {1234: None, 5: None})
    fit = fit_sweep_dir(out, n_boot=0, log=lambda m: None)  # predicted before it trains
    (t,) = fit["prediction"]["targets"]
    assert t["loss"] is None and fit["prediction"]["targets_pending"] == ["target-L3-d32-h2"]
    exact = float(paper_law(t["flops"], **LAW))
    out, recs = _folder(tmp_path / "b", data, {1234: 1.01, 5: 1.03})
    assert recs[-2]["name"] == "target-L3-d32-h2" and recs[-2]["replicate_of"] is None
    assert recs[-1]["name"] == "target-L3-d32-h2-s5" and recs[-1]["seed"] == 5
    assert recs[-2]["seed"] == 1234  # runtime.seed's default, the first target seed
    lines: list[str] = []
    fit = fit_sweep_dir(out, n_boot=50, log=lines.append)
    (t,) = fit["prediction"]["targets"]
    mean = exact * 1.02
    assert t["name"] == "target-L3-d32-h2" and t["loss"] == pytest.approx(mean)
    assert t["seed_losses"] == pytest.approx({"1234": exact * 1.01, "5": exact * 1.03})
    sd = statistics.stdev([exact * 1.01, exact * 1.03])
    assert t["seed_rel_sd"] == pytest.approx(sd / mean)
    assert t["rel_error"] == pytest.approx(1 / 1.02 - 1, abs=2e-3)
    assert fit["prediction"]["targets_pending"] == []
    [line] = [x for x in lines if x.startswith("held-out target target-L3-d32-h2")]
    assert f"vs measured {mean:.4f} (mean of 2 seeds, sd {100 * sd / mean:.2f}%)" in line
    assert [f["name"] for f in fit["loss_law"]["frontier"]] == [
        r["name"] for r in sorted(recs[:-2], key=lambda r: r["flops"])
    ]  # neither seed of the target is fitted


@pytest.mark.slow
def test_adding_target_seeds_trains_only_the_new_replicates(tmp_path, data, capsys):
    """A finished sweep given target_seeds later trains each target at the new seeds only;
    the first seed's run is kept, and the fit reads the target against the seeds' mean."""
    small = {"n_layer": 2, "n_embd": 24, "n_head": 2}
    d = sweep_dict(tmp_path, data, targets=[small])
    path, out = write_sweep(tmp_path, d), tmp_path / "sweep"
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    capsys.readouterr()
    path = write_sweep(tmp_path, {**d, "target_seeds": [1234, 5]})  # 1234: runtime.seed's default
    assert cli(["sweep", str(path), "--dry-run"]) == 0
    assert "target-L2-d24-h2-s5" in capsys.readouterr().out
    assert cli(["sweep", str(path)]) == 0
    run = capsys.readouterr().out
    assert run.count("finished earlier") == 4 and "target-L2-d24-h2-s5: val_loss" in run
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    a, b = recs[-2:]
    assert (a["name"], a["seed"], b["name"], b["seed"]) == (
        "target-L2-d24-h2",
        1234,
        "target-L2-d24-h2-s5",
        5,
    )
    assert a["val_loss"] != b["val_loss"]  # a different initialisation and data order
    ran = yaml.safe_load((out / "runs" / b["name"] / "config.yaml").read_text())
    assert ran["runtime"]["seed"] == 5
    (t,) = json.loads((out / "fit.json").read_text())["prediction"]["targets"]
    assert t["loss"] == pytest.approx((a["val_loss"] + b["val_loss"]) / 2)
    assert "(mean of 2 seeds, sd " in run


def test_targets_intervals_rest_on_the_noise_the_seeds_measured(tmp_path, data):
    """A ladder of seed replicates whose means lie exactly on a law (no residuals): the
    targets' intervals come from the seeds' spread alone, pooled over the trials (fit.json
    prediction.seed_noise), a fitted point's noise that over its replicates and a target's
    over the seeds it will average (target_seeds)."""
    e = 0.004  # each seed's loss is the law's x (1 +- e): one run's relative sd e*sqrt(2)
    d = sweep_dict(tmp_path, data, seeds=[1, 2], targets=[TARGET], target_seeds=[1, 2])
    d["sizes"] += [
        {"n_layer": 2, "n_embd": 8, "n_head": 2},
        {"n_layer": 2, "n_embd": 12, "n_head": 2},
    ]
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.yaml").write_text(yaml.safe_dump({**d, "kind": "tokens_per_param"}))
    recs = []
    for p in plan_points(parse_sweep(d), 257):
        if not p.target:
            loss = float(paper_law(p.flops(), **LAW)) * (1 + (e if p.seed == 1 else -e))
            summary = {"val_loss": loss, "tokens": p.cfg.plan.tokens, "steps": p.cfg.plan.steps}
            recs.append(make_record(p, "ok", "d1", summary, wall_s=1.0))
    write_results(out, recs)
    fit = fit_sweep_dir(out, n_boot=60, log=lambda m: None)
    noise = fit["prediction"]["seed_noise"]
    assert noise["seed_rel_sd"] == pytest.approx(e * 2**0.5, rel=1e-6)
    assert noise["fitted_replicates"] == 2 and noise["planned_target_replicates"] == 2
    (t,) = fit["prediction"]["targets"]
    lo, hi = t["pi95"]
    assert lo < t["predicted"] < hi and (hi - lo) / t["predicted"] > 2 * 1.96 * e
