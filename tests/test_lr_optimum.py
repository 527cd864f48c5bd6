"""lr_select: parabola — the loss at the best LR from a grid of LR trials."""

import math

import pytest

from cgpt.train.fits.lr_optimum import lr_from_law, lr_law, lr_optimum, parabola_vertex


def _trials(lrs, f):
    return [{"lr": lr, "val_loss": f(lr)} for lr in lrs]


def test_vertex_of_a_known_parabola():
    # y = 2 (x - 0.3)^2 + 1.5, evaluated independently at three points
    xs = (-1.0, 0.5, 2.0)
    ys = tuple(2 * (x - 0.3) ** 2 + 1.5 for x in xs)
    xv, yv = parabola_vertex(xs, ys)
    assert xv == pytest.approx(0.3, abs=1e-12)
    assert yv == pytest.approx(1.5, abs=1e-12)
    assert parabola_vertex((0.0, 1.0, 2.0), (1.0, 2.0, 1.0)) is None  # opens downwards


def test_recovers_the_optimum_of_a_loss_quadratic_in_log_lr():
    # loss = 2.8 + 0.25 (ln lr - ln 6e-3)^2: optimum at 6e-3 between the 4e-3 and 8e-3 trials
    f = lambda lr: 2.8 + 0.25 * (math.log(lr) - math.log(6e-3)) ** 2  # noqa: E731
    got = lr_optimum(_trials([2e-3, 4e-3, 8e-3, 1.6e-2], f))
    assert got["method"] == "parabola"
    assert got["lr"] == pytest.approx(6e-3, rel=1e-9)
    assert got["loss"] == pytest.approx(2.8, abs=1e-12)
    best = min(f(lr) for lr in (2e-3, 4e-3, 8e-3, 1.6e-2))
    assert got["loss"] < best  # the grid's best trial sits above the optimum


def test_best_trial_stands_at_the_grid_edge_or_with_failed_trials():
    f = lambda lr: 3.0 - lr  # noqa: E731  (falls all the way: optimum beyond the grid)
    edge = lr_optimum(_trials([1e-3, 2e-3, 4e-3], f))
    assert edge["method"] == "best" and edge["lr"] == 4e-3
    assert "edge" in edge["reason"]
    two = lr_optimum(
        [
            {"lr": 1e-3, "val_loss": 3.0},
            {"lr": 2e-3, "val_loss": None},
            {"lr": 4e-3, "val_loss": float("nan")},
            {"lr": 8e-3, "val_loss": 3.2},
        ]
    )
    assert two == {
        "lr": 1e-3,
        "loss": 3.0,
        "method": "best",
        "reason": "fewer than 3 finished trials",
    }
    with pytest.raises(ValueError):
        lr_optimum([{"lr": 1e-3, "val_loss": None}])


def _records(group, losses):
    # the fields results.jsonl holds for LR trials (cgpt.train.sweeps.records.make_record)
    return [
        {
            "name": f"{group}-lrx{m:g}",
            "group": group,
            "lr_mult": m,
            "lr": 4e-3 * m,
            "status": "ok",
            "val_loss": v,
        }
        for m, v in losses.items()
    ]


def test_sweep_fits_see_the_parabola_optimum_and_keep_the_measured_loss():
    from cgpt.train.sweeps.records import best_trials

    recs = _records("A", {0.5: 3.1629, 1: 2.9990, 2: 2.7901, 4: 3.0022}) + _records(
        "B",
        {0.5: 3.5, 1: 3.4, 2: 3.3},  # best at the edge: the trial stands
    )
    keep, summary = best_trials(recs, "parabola")
    a = next(r for r in keep if r["group"] == "A")
    # vertex through (ln 4e-3, 2.9990), (ln 8e-3, 2.7901), (ln 1.6e-2, 3.0022), by hand:
    # in log2 units t = 0, 1, 2: curvature (2.9990 - 2*2.7901 + 3.0022)/2 = 0.2105,
    # slope at 0: 2.7901 - 2.9990 - 0.2105 = -0.4194 -> t* = 0.99620, L* = 2.9990 - 0.4194²/0.842
    assert a["name"] == "A-lrx2" and a["val_loss_best_trial"] == 2.7901
    assert a["val_loss"] == pytest.approx(2.9990 - 0.4194**2 / (4 * 0.2105), abs=2e-4)
    assert a["lr_opt"] == pytest.approx(4e-3 * 2**0.9962, rel=1e-3)
    b = next(r for r in keep if r["group"] == "B")
    assert b["val_loss"] == b["val_loss_best_trial"] == 3.3
    assert summary["groups"]["B"]["optimum"]["method"] == "best"
    plain, _ = best_trials(recs)  # the default keeps the measured best trial
    assert next(r for r in plain if r["group"] == "A")["val_loss"] == 2.7901


def test_lr_select_needs_lr_tuned():
    from cgpt.model.errors import ConfigError
    from cgpt.train.sweeps.sweep import parse_sweep

    raw = {
        "name": "s",
        "out_dir": "o",
        "data": {"path": "d"},
        "tokens_per_param": 20,
        "sizes": [{"n_layer": 1, "n_embd": 16, "n_head": 2}],
        "plan": {"global_batch_seqs": 8, "lr": 1e-3},
        "lr_select": "parabola",
    }
    with pytest.raises(ConfigError, match="lr_select goes with lr: tuned"):
        parse_sweep(raw)
    assert parse_sweep({**raw, "lr": "tuned"}).lr_select == "parabola"


def test_lr_law_recovers_a_power_law_in_model_size():
    # optimal LR = 0.02 x (N / 1e4)^-0.4, measured at four sizes
    pts = [(n, 0.02 * (n / 1e4) ** -0.4) for n in (1e4, 2e4, 5e4, 1e5)]
    law = lr_law(pts)
    assert law["exponent"] == pytest.approx(-0.4, abs=1e-12)
    assert law["n_ref"] == 1e5 and law["rmse_ln"] == pytest.approx(0, abs=1e-12)
    assert lr_from_law(law, 1e6) == pytest.approx(0.02 * 100**-0.4, rel=1e-12)
    assert law["form"] == "power" and law["power"]["exponent_ci95"] == pytest.approx([-0.4, -0.4])
    # small noise on the same law: the exponent is resolved and kept
    wobble = [(n, lr * f) for (n, lr), f in zip(pts, (1.05, 0.95, 1.04, 0.97))]
    kept = lr_law(wobble)
    lo, hi = kept["power"]["exponent_ci95"]
    assert kept["form"] == "power" and hi < 0 and lo < kept["exponent"] < hi


def test_lr_law_without_a_resolved_trend_is_constant():
    """An exponent whose 95% interval holds 0 is not extrapolated: the law is the geometric
    mean of the optima (the fitted power law is kept beside it)."""
    optima = [(1e4, 0.02), (2e4, 0.02), (4e4, 0.01)]
    law = lr_law(optima)
    assert law["form"] == "constant" and law["exponent"] == 0
    assert law["lr_ref"] == pytest.approx((0.02 * 0.02 * 0.01) ** (1 / 3), rel=1e-12)
    assert lr_from_law(law, 1e7) == law["lr_ref"] and law["rmse_ln"] > 0
    lo, hi = law["power"]["exponent_ci95"]
    assert lo < 0 < hi and law["power"]["exponent"] < 0
    two = lr_law(optima[:2])  # two sizes: no interval, the power law as fitted
    assert two["form"] == "power" and two["power"]["exponent_ci95"] is None


def test_lr_law_needs_two_sizes():
    with pytest.raises(ValueError, match="two or more sizes"):
        lr_law([(1e4, 0.01), (1e4, 0.02)])
