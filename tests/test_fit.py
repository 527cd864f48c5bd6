"""Scaling-law fits recover known laws from synthetic points; bad inputs say what is missing."""

import math

import numpy as np
import pytest

from cgpt.train.fits.chinchilla import chinchilla_loss, chinchilla_tokens_per_param, fit_chinchilla
from cgpt.train.fits.fit import (
    PAPER_LAW,
    FitError,
    fit_paper_law,
    fit_results,
    monotonic_report,
    paper_law,
)
from cgpt.train.fits.isoflop import fit_isoflop
from cgpt.train.fits.plots import plot_isoflop, plot_scaling

# docs/REFERENCE.md, Results: train FLOPs and Pile loss of the seven standard models, and the
# paper law's predictions for them
PAPER_FLOPS = [2.6e18, 1.3e19, 6.1e19, 2.8e20, 1.1e21, 6.3e21, 2.3e22]
PAPER_LOSS = [2.608, 2.349, 2.181, 1.997, 1.834, 1.704, 1.572]
PAPER_PRED = [2.603, 2.369, 2.168, 1.992, 1.849, 1.687, 1.580]

# Chinchilla approach-3 law (docs/REFERENCE.md, Related scaling laws)
CHIN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def test_paper_law_matches_reference_predictions():
    pred = paper_law(PAPER_FLOPS, **PAPER_LAW)
    np.testing.assert_allclose(pred, PAPER_PRED, atol=6e-4)


def test_paper_law_recovered_from_noisy_points():
    rng = np.random.default_rng(0)
    c = np.logspace(12, 16, 9)
    y = paper_law(c, a=3e17, b=0.15, c=1.2) + rng.normal(0, 0.004, c.size)
    fit = fit_paper_law(c, y, n_boot=200)
    assert fit["b"] == pytest.approx(0.15, rel=0.1)
    assert fit["c"] == pytest.approx(1.2, abs=0.08)
    assert fit["r2"] > 0.999
    assert fit["rmse"] < 0.01 and fit["dof"] == 6
    lo, hi = fit["ci95"]["b"]
    assert lo < 0.15 < hi and lo < fit["b"] < hi
    # the fitted curve predicts an unseen, larger budget well
    assert paper_law(1e17, fit["a"], fit["b"], fit["c"]) == pytest.approx(
        paper_law(1e17, 3e17, 0.15, 1.2), abs=0.03
    )


def test_power_law_form_fixes_the_floor_at_zero():
    """loss_law: power: two parameters, c = 0 in the fit and in every bootstrap draw, and
    the held-out checks and fit.json use the same form."""
    rng = np.random.default_rng(1)
    c = np.logspace(11, 12.5, 5)
    y = paper_law(c, a=1.5e17, b=0.11, c=0.0) * (1 + rng.normal(0, 0.003, c.size))
    far = 30 * c[-1]
    fit = fit_paper_law(c, y, n_boot=200, predict_at=[far], keep_draws=50, floor=False)
    assert fit["form"] == "power" and fit["c"] == 0.0 and fit["dof"] == 3
    assert fit["b"] == pytest.approx(0.11, rel=0.05)
    assert {d[2] for d in fit["draws"]} == {0.0} and fit["ci95"]["c"] == [0.0, 0.0]
    [pred] = fit["predictions"]
    truth = paper_law(far, 1.5e17, 0.11, 0.0)
    assert pred["loss"] == pytest.approx(truth, rel=0.01)
    assert pred["pi95"][0] < truth < pred["pi95"][1]
    paper = fit_paper_law(c, y, n_boot=0, floor=True)
    assert paper["form"] == "paper" and paper["dof"] == 2
    recs = [
        dict(name=f"p{i}", status="ok", params=1e4 * 2**i, tokens=2e5 * 2**i, flops=float(x))
        | dict(val_loss=float(v))
        for i, (x, v) in enumerate(zip(c, y))
    ]
    res = fit_results(recs, kind="tokens_per_param", tokens_per_param=20.0, n_boot=40, floor=False)
    assert res["loss_law"]["form"] == "power" and res["loss_law"]["c"] == 0.0
    llo = res["prediction"]["leave_largest_out"]
    alone = fit_paper_law(c[:-1], y[:-1], n_boot=0, predict_at=[c[-1]], floor=False)
    assert llo["predicted"] == pytest.approx(alone["predictions"][0]["loss"], rel=1e-9)


def test_refit_of_published_points_reproduces_paper_predictions():
    fit = fit_paper_law(PAPER_FLOPS, PAPER_LOSS, n_boot=50)
    pred = paper_law(PAPER_FLOPS, fit["a"], fit["b"], fit["c"])
    np.testing.assert_allclose(pred, PAPER_PRED, atol=0.01)
    assert fit["b"] == pytest.approx(PAPER_LAW["b"], rel=0.1)


def _isoflop_groups(noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    groups = {}
    for c in (1e17, 1e18, 1e19, 1e20):
        n_guess = math.sqrt(c / 6 / 20)
        for f in (0.25, 0.5, 1, 2, 4):
            n = n_guess * f
            d = c / 6 / n
            loss = chinchilla_loss(n, d, **CHIN) * math.exp(rng.normal(0, noise))
            groups.setdefault(c, []).append(
                dict(params=n, tokens=d, loss=loss, flops=c, budget=c, name=f"{c:g}-{f}")
            )
    return groups


def test_isoflop_recovers_chinchilla_allocation():
    iso = fit_isoflop(_isoflop_groups())
    a, b = CHIN["alpha"], CHIN["beta"]
    # Hoffmann et al. eq. 4: N_opt ∝ C^(β/(α+β)), D_opt ∝ C^(α/(α+β))
    assert iso["alpha"] == pytest.approx(b / (a + b), abs=0.02)
    assert iso["beta"] == pytest.approx(a / (a + b), abs=0.02)
    assert iso["alpha"] + iso["beta"] == pytest.approx(1.0, abs=0.01)  # C ∝ N·D
    exact = [
        chinchilla_tokens_per_param(
            {
                "n_opt_coefficient": (a * CHIN["A"] / (b * CHIN["B"])) ** (1 / (a + b)),
                "n_opt_exponent": b / (a + b),
            },
            c,
        )
        for c in (1e17, 1e18, 1e19, 1e20)
    ]
    got = [x["tokens_per_param"] for x in iso["budgets"]]
    np.testing.assert_allclose(got, exact, rtol=0.15)
    assert all(x["bracketed"] for x in iso["budgets"])


def test_isoflop_tokens_per_param_comes_with_an_interval():
    """Budget + residual bootstrap: the 95% interval contains the point estimate, has width,
    widens with noise, and holds the law's own D/N at the budgets' geometric-mean compute."""
    quiet = fit_isoflop(_isoflop_groups(noise=0.001))["tokens_per_param_ci95"]
    noisy = fit_isoflop(_isoflop_groups(noise=0.01))
    lo, hi = noisy["tokens_per_param_ci95"]["interval"]
    assert lo < noisy["tokens_per_param"] < hi
    qlo, qhi = quiet["interval"]
    assert 0 < qhi - qlo < hi - lo
    a, b = CHIN["alpha"], CHIN["beta"]
    mid = float(np.exp(np.mean(np.log([1e17, 1e18, 1e19, 1e20]))))
    law = chinchilla_tokens_per_param(
        {
            "n_opt_coefficient": (a * CHIN["A"] / (b * CHIN["B"])) ** (1 / (a + b)),
            "n_opt_exponent": b / (a + b),
        },
        mid,
    )
    assert qlo * 0.8 < law < qhi * 1.25  # the 3-point windows make the parabolas approximate
    assert "_points" not in noisy["budgets"][0]


def test_isoflop_exponents_come_with_intervals():
    """Bootstrap over budgets: the 95% intervals of α and β hold the law's
    β/(α+β) and α/(α+β) (Hoffmann et al. eq. 4), contain the point estimates, and widen
    with noise; a one-budget draw has no slope and is counted as dropped."""
    a, b = CHIN["alpha"], CHIN["beta"]
    quiet = fit_isoflop(_isoflop_groups(noise=0.002))
    noisy = fit_isoflop(_isoflop_groups(noise=0.01))
    for iso in (quiet, noisy):
        for key, truth in (("alpha", b / (a + b)), ("beta", a / (a + b))):
            lo, hi = iso[f"{key}_ci95"]["interval"]
            assert lo < iso[key] < hi and lo < truth < hi, (key, lo, truth, hi)
        assert iso["alpha_ci95"]["dropped"] >= iso["tokens_per_param_ci95"]["dropped"]
    qlo, qhi = quiet["alpha_ci95"]["interval"]
    nlo, nhi = noisy["alpha_ci95"]["interval"]
    assert 0 < qhi - qlo < nhi - nlo


def test_chinchilla_approach3_recovers_parameters():
    pts = [p for g in _isoflop_groups(noise=0.001).values() for p in g]
    fit = fit_chinchilla(
        [p["params"] for p in pts], [p["tokens"] for p in pts], [p["loss"] for p in pts], n_boot=30
    )
    assert fit["alpha"] == pytest.approx(CHIN["alpha"], abs=0.03)
    assert fit["beta"] == pytest.approx(CHIN["beta"], abs=0.03)
    assert fit["E"] == pytest.approx(CHIN["E"], abs=0.1)
    assert fit["r2"] > 0.999


# Besiroglu et al. 2024's refit of Chinchilla (docs/REFERENCE.md, Related scaling laws)
BESIROGLU = dict(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def _besiroglu_points(noise: float, seed: int = 0):
    """5 budgets 1e18..1e22 × 7 sizes from 0.1× to 10× the 20-tokens/param size."""
    rng = np.random.default_rng(seed)
    n, d, y = [], [], []
    for c in np.logspace(18, 22, 5):
        for f in np.logspace(-1, 1, 7):
            nn = math.sqrt(c / 6 / 20) * f
            n.append(nn)
            d.append(c / 6 / nn)
            y.append(chinchilla_loss(nn, d[-1], **BESIROGLU) * math.exp(rng.normal(0, noise)))
    return n, d, y


def test_chinchilla_fit_recovers_besiroglu_parameters():
    """Golden: the approach-3 fitter recovers the published parameters exactly from exact
    points, and within tolerance (true values inside the bootstrap intervals) at 0.2% noise."""
    exact = fit_chinchilla(*_besiroglu_points(0.0), n_boot=0)
    for k, v in BESIROGLU.items():
        assert exact[k] == pytest.approx(v, rel=1e-6), k
    noisy = fit_chinchilla(*_besiroglu_points(0.002), n_boot=40)
    assert noisy["E"] == pytest.approx(1.82, abs=0.02)
    assert noisy["alpha"] == pytest.approx(0.3478, abs=0.01)
    assert noisy["beta"] == pytest.approx(0.3658, abs=0.01)
    assert noisy["A"] == pytest.approx(482.01, rel=0.15)
    assert noisy["B"] == pytest.approx(2085.43, rel=0.15)
    for k, v in BESIROGLU.items():
        lo, hi = noisy["ci95"][k]
        assert lo <= v <= hi, (k, lo, v, hi)
    assert noisy["objective"].startswith("Huber(delta=1e-3)")


def test_hoffmann_grid_of_starts():
    from cgpt.train.fits.chinchilla import chinchilla_starts

    starts = chinchilla_starts("hoffmann", 2.0)
    assert len(starts) == 6 * 6 * 5 * 5 * 5 == 4500  # Hoffmann et al. Appendix D.2
    assert (25.0, 0.0, -1.0, 2.0, 0.5) in starts
    assert len(chinchilla_starts("coarse", 2.0)) == 48
    with pytest.raises(ValueError):
        chinchilla_starts("fine", 2.0)


def test_prediction_check_leave_largest_and_one_out():
    from cgpt.train.fits.fit import prediction_check

    rng = np.random.default_rng(0)
    c = np.logspace(12, 16, 6)
    y = paper_law(c, a=3e17, b=0.15, c=1.2) + rng.normal(0, 0.004, c.size)
    chk = prediction_check(c, y, n_boot=100)
    llo = chk["leave_largest_out"]
    assert llo["flops"] == 1e16 and llo["fitted_on"] == 5
    assert llo["predicted"] == pytest.approx(paper_law(1e16, 3e17, 0.15, 1.2), abs=0.02)
    assert abs(llo["rel_error"]) < 0.01 and llo["pi95"][0] < llo["predicted"] < llo["pi95"][1]
    assert llo["inside_pi95"] is True
    loo = chk["leave_one_out"]
    assert len(loo["points"]) == 6 and loo["mean_abs_error"] < 0.01
    assert loo["points"][-1] == llo
    # 4 points: held-out fits of 3 parameters to 3 points have no interval; 3 points: refused
    few = prediction_check(c[:4], y[:4])
    assert few["leave_largest_out"]["pi95"] is None
    with pytest.raises(FitError, match="add 1 more"):
        prediction_check(c[:3], y[:3])


def test_fit_results_report_their_predictive_error(tmp_path):
    recs = [
        dict(name=f"p{i}", status="ok", params=1e5 * 2**i, tokens=2e6 * 2**i, flops=float(c))
        | dict(val_loss=float(paper_law(c, 1e17, 0.12, 1.0) * (1 + 0.002 * (-1) ** i)))
        for i, c in enumerate(np.logspace(12, 15, 6))
    ]
    fit = fit_results(recs, kind="tokens_per_param", tokens_per_param=20.0, n_boot=60)
    llo = fit["prediction"]["leave_largest_out"]
    assert llo["flops"] == pytest.approx(1e15) and llo["pi95"] is not None
    assert 20 <= len(fit["loss_law"]["draws"]) <= 60
    assert fit["loss_law"]["residual_scale"] > 0
    plot_scaling([dict(r, loss=r["val_loss"]) for r in recs], fit, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_too_few_points_say_how_many_more():
    with pytest.raises(FitError, match="has 2: add 1 more"):
        fit_paper_law([1e12, 1e13], [3.0, 2.8])
    with pytest.raises(FitError, match="add 3 more"):
        fit_chinchilla([1e6, 2e6, 4e6], [1e8, 1e8, 1e8], [3, 2.9, 2.8])
    groups = _isoflop_groups()
    small = {c: pts[:2] for c, pts in groups.items()}
    with pytest.raises(FitError, match="needs at least 2 budgets.*has 0.*add 2 more"):
        fit_isoflop(small)


def test_one_ratio_cannot_separate_n_and_d():
    n = np.logspace(6, 8, 8)
    with pytest.raises(FitError, match="different tokens-per-parameter"):
        fit_chinchilla(n, 20 * n, chinchilla_loss(n, 20 * n, **CHIN))


def test_rising_loss_is_refused_and_non_convex_budget_skipped():
    with pytest.raises(FitError, match="does not fall"):
        fit_paper_law([1e12, 1e13, 1e14], [2.0, 2.5, 3.0])
    groups = _isoflop_groups()
    groups[1e17] = [dict(p, loss=3.0 - 0.1 * i) for i, p in enumerate(groups[1e17])]
    iso = fit_isoflop(groups)
    assert [b["budget"] for b in iso["budgets"]] == [1e18, 1e19, 1e20]
    assert "no interior minimum" in iso["skipped"][0]["reason"]


def test_fit_results_excludes_nan_and_failed_points():
    recs = []
    for i, c in enumerate(np.logspace(12, 15, 6)):
        recs.append(
            dict(
                name=f"p{i}",
                status="ok",
                params=1e5 * 2**i,
                tokens=2e6 * 2**i,
                flops=float(c),
                val_loss=float(paper_law(c, 1e17, 0.12, 1.0)),
            )
        )
    recs[2]["val_loss"] = float("nan")
    recs.append(dict(name="bad", status="failed", reason="loss became nan at step 3"))
    fit = fit_results(recs, kind="tokens_per_param", tokens_per_param=20.0, n_boot=50)
    assert {e["name"] for e in fit["excluded"]} == {"p2", "bad"}
    assert "nan" in fit["excluded"][0]["reason"].lower()
    assert fit["loss_law"]["n_points"] == 5 and fit["loss_law"]["monotonic"]
    assert fit["loss_law"]["b"] == pytest.approx(0.12, rel=0.02)
    assert fit["tokens_per_param"] == 20.0 and "skipped" in fit["chinchilla"]
    assert any("p2" in w for w in fit["warnings"])


def test_monotonic_report_lists_violations():
    rep = monotonic_report([1e3, 1e2, 1e4], [2.0, 2.5, 2.1])
    assert not rep["monotonic"]
    assert rep["violations"] == [{"flops": [1e3, 1e4], "loss": [2.0, 2.1]}]


def test_plots_written(tmp_path):
    groups = _isoflop_groups()
    pts = [p for g in groups.values() for p in g]
    recs = [dict(p, status="ok", val_loss=p["loss"]) for p in pts]
    fit = fit_results(recs, kind="isoflop", n_boot=20)
    assert fit["loss_law"]["r2"] > 0.99 and fit["tokens_per_param"] > 10
    plot_scaling(pts, fit, tmp_path / "scaling.png", title="test")
    plot_isoflop(pts, fit, tmp_path / "isoflop.png")
    for name in ("scaling.png", "isoflop.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_isoflop_parabola_is_fitted_around_the_measured_minimum():
    """Measured on CPU (configs/sweep-isoflop-cpu.yaml, budget 9e10): the best size is the
    second smallest; the far large sizes pull a parabola over all six below the smallest
    size, the ±2 window keeps it at the minimum."""
    from cgpt.train.fits.isoflop import fit_isoflop_budget

    params = [5496, 8820, 15808, 28320, 56608, 140832]
    losses = [3.8368, 3.6994, 3.9097, 4.1146, 4.5224, 5.0014]
    tokens = [9e10 / (6 * p) for p in params]  # any D falling with N at fixed compute
    everything = fit_isoflop_budget(params, tokens, losses, window=len(params))
    assert not everything["bracketed"] and everything["n_opt"] < params[0]
    local = fit_isoflop_budget(params[::-1], tokens[::-1], losses[::-1])  # order-independent
    assert local["bracketed"] and params[0] < local["n_opt"] < params[2]
    assert local["n_points"] == 4  # sizes 0..3: the best (1) and two on its right


def test_measured_noise_is_a_floor_under_the_prediction_interval():
    """noise / new_noise (relative sds measured apart from the fit, e.g. by seed replicates):
    points exactly on a power law leave no residuals, so only that floor widens the interval,
    which then matches least squares' own prediction interval in ln C for a known sd; below
    the residuals' size the floor changes nothing, draw for draw."""
    c = np.logspace(11.5, 12.3, 5)
    y = paper_law(c, a=4e16, b=0.106, c=0.0)
    far, sd = 30 * c[-1], 0.005
    kw = dict(n_boot=400, predict_at=[far], floor=False)
    bare = fit_paper_law(c, y, **kw)["predictions"][0]
    assert bare["pi95"][1] - bare["pi95"][0] < 1e-9  # nothing to resample
    [pred] = fit_paper_law(c, y, noise=sd, new_noise=[sd], **kw)["predictions"]
    x = np.log(c)
    lever = 1 / len(x) + (math.log(far) - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum()
    half = 1.96 * sd * math.sqrt(1 + lever)  # relative, sd known
    lo, hi = pred["pi95"]
    assert (hi - lo) / 2 / pred["loss"] == pytest.approx(half, rel=0.15)
    noisy = y * (1 + np.random.default_rng(3).normal(0, 0.01, y.size))
    assert fit_paper_law(c, noisy, **kw) == fit_paper_law(c, noisy, noise=1e-5, **kw)
