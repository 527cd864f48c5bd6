"""Seed replicates in sweeps (``seeds: [...]``): every point once per seed, the fits on the
mean, the spread reported."""

import json
import statistics

import pytest
import yaml
from helpers import SWEEP_SIZES, make_sweep_data, sweep_dict, write_sweep

from cgpt.launch.cli import main as cli
from cgpt.model.errors import ConfigError
from cgpt.train.sweeps.seeds import aggregate_replicates
from cgpt.train.sweeps.sweep import parse_sweep, plan_points


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sweep_data(tmp_path_factory.mktemp("data"))


def test_replicates_plan_one_run_per_seed(tmp_path, data):
    sweep = parse_sweep(sweep_dict(tmp_path, data, seeds=[7, 8]))
    points = plan_points(sweep, 257)
    assert [p.name for p in points[:2]] == ["L1-d8-h2-s7", "L1-d8-h2-s8"]
    assert len(points) == 2 * len(SWEEP_SIZES)
    for p in points:
        assert p.cfg.runtime.seed == p.seed and p.replicate_of == p.name.rsplit("-s", 1)[0]
        assert p.cfg.runtime.out_dir.endswith(f"/runs/{p.name}")
    a, b = points[0].cfg.to_dict(), points[1].cfg.to_dict()  # only seed and folder differ
    for d in (a, b):
        d["runtime"].pop("seed"), d["runtime"].pop("out_dir")
    assert a == b
    tuned = plan_points(parse_sweep(sweep_dict(tmp_path, data, seeds=[1, 2], lr="tuned")), 257)
    assert len(tuned) == 2 * 3 * len(SWEEP_SIZES) and tuned[0].name == "L1-d8-h2-lrx0.5-s1"


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"seeds": [1]}, "at least two different seeds"),
        ({"seeds": [3, 3]}, "at least two different seeds"),
        ({"seeds": [1, 2], "branches": {"at": [0.5, 1]}}, "do not combine"),
    ],
)
def test_bad_seeds(tmp_path, data, extra, words):
    d = sweep_dict(tmp_path, data, **extra)
    with pytest.raises(ConfigError, match=words):
        parse_sweep(d)
    d = sweep_dict(tmp_path, data, seeds=[1, 2])
    d["runtime"]["seed"] = 5
    with pytest.raises(ConfigError, match="runtime.seed is set per replicate"):
        parse_sweep(d)


def test_aggregate_keeps_order_and_failures():
    def rec(name, of, seed, loss, status="ok"):
        return {
            "name": name,
            "replicate_of": of,
            "seed": seed,
            "val_loss": loss,
            "status": status,
            "params": 10,
            "wall_s": 1.0,
        }

    recs = [
        {"name": "plain", "status": "ok", "val_loss": 3.0},
        rec("A-s1", "A", 1, 2.0),
        rec("A-s2", "A", 2, 2.2),
        rec("A-s3", "A", 3, None, "failed"),
        rec("B-s1", "B", 1, None, "failed"),
        rec("B-s2", "B", 2, None, "failed"),
    ]
    out, summary = aggregate_replicates(recs)
    assert [r["name"] for r in out] == ["plain", "A", "B-s1", "B-s2"]
    a = out[1]
    assert a["val_loss"] == pytest.approx(2.1) and a["replicates"] == 2
    assert a["val_loss_sd"] == pytest.approx(statistics.stdev([2.0, 2.2]))
    assert a["val_loss_seeds"] == {"1": 2.0, "2": 2.2} and "seed" not in a
    assert summary["points"]["A"]["failed"] == 1 and "1 of 3" in summary["warnings"][0]
    assert summary["mean_rel_sd"] == pytest.approx(statistics.stdev([2.0, 2.2]) / 2.1)
    assert aggregate_replicates(recs[:1]) == (recs[:1], {})


@pytest.mark.slow
def test_seed_sweep_end_to_end(tmp_path, data, capsys):
    d = sweep_dict(tmp_path, data, seeds=[11, 12])
    d["sizes"] = [dict(s) for s in SWEEP_SIZES[1:]]  # 2 sizes x 2 seeds
    path = write_sweep(tmp_path, d)
    out = tmp_path / "sweep"
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in recs] == [11, 12, 11, 12] and all(r["status"] == "ok" for r in recs)
    for r in recs:  # each replicate really trained with its own seed
        cfg = yaml.safe_load((out / "runs" / r["name"] / "config.yaml").read_text())
        assert cfg["runtime"]["seed"] == r["seed"]
    assert recs[0]["val_loss"] != recs[1]["val_loss"]  # the seed changes the run
    from cgpt.train.sweeps.sweep import fit_sweep_dir

    with pytest.raises(Exception, match="add 1 more"):  # two sizes: too few for the law
        fit_sweep_dir(out, n_boot=0, log=lambda m: None)
    fit = json.loads((out / "fit.json").read_text())
    pts = fit["seeds"]["points"]
    assert set(pts) == {"L1-d16-h2", "L2-d16-h2"}
    for name, p in pts.items():
        mine = [r["val_loss"] for r in recs if r["replicate_of"] == name]
        assert p["mean"] == pytest.approx(statistics.fmean(mine), abs=1e-12)
        assert p["sd"] == pytest.approx(statistics.stdev(mine), abs=1e-12)


def test_ready_predict_config_plans():
    """configs/sweep-cpu-predict.yaml: 6 sizes x 3 seeds, the LR rule of its header
    (5.66e-3 x n_embd / 32), warmup = params tokens, non-embedding share >= 58%."""
    from pathlib import Path

    from cgpt.model.sizes import num_non_embedding_params, num_params
    from cgpt.train.sweeps.sweep import load_sweep

    sweep = load_sweep(Path(__file__).parents[1] / "configs" / "sweep-cpu-predict.yaml")
    points = plan_points(sweep, 512)
    assert len(points) == 18 and len({p.replicate_of for p in points}) == 6
    assert sorted({p.seed for p in points}) == [1, 2, 1234]
    for p in points:
        m, pl = p.cfg.model, p.cfg.plan
        assert pl.lr == pytest.approx(5.66e-3 * m.n_embd / 32)
        assert num_non_embedding_params(m) >= 0.58 * num_params(m)
        assert pl.warmup_steps == -(-num_params(m) // pl.global_batch_tokens)
        assert pl.tokens == pytest.approx(20 * num_params(m), rel=0.01)
