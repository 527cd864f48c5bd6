"""lr_select: parabola — the loss at the best LR from a grid of LR trials."""

import math

import pytest

from cgpt.train.scaling.lr_optimum import lr_optimum, parabola_vertex


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
