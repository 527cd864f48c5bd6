"""Evaluation noise of the val loss (issue 27 item 2): the per-window losses of a real run's
final model reproduce the val_loss its trainer wrote, and their bootstrap gives the noise."""

from pathlib import Path

import numpy as np
import pytest
from helpers import make_byte_data, make_cfg

from cgpt.model.errors import CgptError
from cgpt.train.config import parse_run_config
from cgpt.train.fits.eval_noise import bootstrap_noise, run_eval_noise, window_losses


def test_bootstrap_noise_is_the_standard_error_of_the_mean():
    x = np.random.default_rng(0).normal(3.0, 0.5, 400)
    d = bootstrap_noise(x, n_boot=4000)
    assert d["windows"] == 400 and d["val_loss"] == pytest.approx(x.mean())
    assert d["sd"] == pytest.approx(x.std(ddof=1) / np.sqrt(400), rel=0.1)
    assert d["rel_sd"] == pytest.approx(d["sd"] / d["val_loss"])
    with pytest.raises(CgptError, match="at least 2"):
        bootstrap_noise([3.0])


@pytest.mark.slow
def test_window_losses_reproduce_the_trainers_val_loss(tmp_path):
    from cgpt.train.loop.trainer import train

    data = make_byte_data(tmp_path / "bytes", n_files=4)
    cfg = parse_run_config(make_cfg(tmp_path, data, steps=12, eval_every=0, eval_batches=3))
    s = train(cfg)
    run = Path(s["run_dir"])
    w = window_losses(run)
    assert len(w) == 3 * 2  # eval_batches x micro_batch windows, as the trainer took
    assert w.mean() == pytest.approx(s["val_loss"], rel=1e-5)
    d = run_eval_noise(run)
    assert d["val_loss"] == pytest.approx(s["val_loss"], rel=1e-5) and d["sd"] > 0
    with pytest.raises(CgptError, match="no model.safetensors"):
        window_losses(tmp_path)


def test_window_losses_refuse_a_mixture_run(tmp_path):
    # a mixture run's val_loss weights several val sets: there is no one folder to score
    from cgpt.model.gpt import GPT
    from cgpt.model.io import save_model

    data = make_byte_data(tmp_path / "bytes", n_files=2)
    d = make_cfg(tmp_path, data)
    d["data"] = {"sources": [{"name": "a", "path": str(data), "weight": 1.0}]}
    run = tmp_path / "run"
    run.mkdir()
    cfg = parse_run_config(d)
    cfg.save(run / "config.yaml")  # what the trainer writes
    save_model(GPT(cfg.model), run / "model.safetensors")
    with pytest.raises(CgptError, match=r"data mixture \(data.sources\)"):
        window_losses(run)
