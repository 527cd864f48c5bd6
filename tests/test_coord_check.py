"""μP coordinate check and LR-transfer machinery on tiny widths (real training, CPU)."""

import json
import math

import pytest

import cgpt.train.mup.coord_check as cc
from cgpt.launch.cli import main as cli_main
from cgpt.train.mup.transfer import plot_transfer, run_transfer

TINY = dict(widths=(32, 64, 128, 256), steps=4, seq_len=32, batch=8, seeds=1)


@pytest.fixture(scope="module")
def data():
    return cc.corpus_bytes(200_000)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matmuls: a second OpenMP thread only spins against the other jobs on a shared CPU
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loglog_slope():
    assert cc.loglog_slope([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert cc.loglog_slope([32, 64, 128], [0.5, 0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)


def test_coord_check_passes_for_mup_and_fails_for_sp(data):
    res = cc.run_coord_check(**TINY, data=data)
    sp, mup = res.slopes["sp"], res.slopes["mup"]
    # measured (widths 32..256, 4 steps, lr 6e-3): SP logits ~+0.85, hidden outputs +1.5..2.0;
    # μP every layer within ±0.13 (threshold 0.25)
    assert res.flat("mup"), mup
    assert not res.flat("sp"), sp
    assert sp["logits"] > 0.5  # SP logits grow with width
    assert max(sp[k] for k in sp if k.startswith("h.")) > 1.0
    assert res.passed


def test_coord_check_catches_a_broken_mup(data, monkeypatch):
    # drop the hidden-matrix LR/m rule: μP's hidden activations must then grow with width
    # (measured: hidden-layer slopes +1.0..+1.5)
    real = cc.param_groups

    def no_lr_scale(model, wd):
        return [{**g, "lr_scale": 1.0} for g in real(model, wd)]

    monkeypatch.setattr(cc, "param_groups", no_lr_scale)
    res = cc.run_coord_check(**TINY, data=data, params=("mup",))
    assert not res.flat("mup")
    assert max(res.slopes["mup"][k] for k in res.slopes["mup"] if k.startswith("h.")) > 0.5


def test_cli_coord_check_writes_plot_and_verdict(tmp_path, capsys):
    rc = cli_main(
        [
            "mup",
            "coord-check",
            "--widths",
            "32,64,128",
            "--steps",
            "3",
            "--seeds",
            "1",
            "--seq-len",
            "32",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "coordinate check PASS" in out
    assert (tmp_path / "coord_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((tmp_path / "coord_check.json").read_text())
    assert d["passed"] and d["mup_flat"] and not d["sp_flat"]
    assert len(d["scales"]["mup"]["logits"]) == 4  # steps 0..3
    assert len(d["scales"]["mup"]["logits"][0]) == 3  # one per width


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["coord-check", "--widths", "32,x"], "--widths: expected comma-separated ints"),
        (["coord-check", "--widths", "64"], "at least two different widths"),
        (["coord-check", "--widths", "30,60"], "multiple of n_head=4"),
        (["coord-check", "--steps", "0"], "--steps must be a positive integer, got 0"),
        (["coord-check", "--lr", "nan"], "--lr must be a positive number, got nan"),
        (["transfer", "--threads", "0"], "--threads must be a positive integer, got 0"),
        (["transfer", "--lrs", "1e-3,2e-3"], "at least three learning rates"),
        (["transfer", "--lrs", "1e-3,-2,3"], "positive numbers"),
        (["transfer", "--widths", "64,100"], "multiples of the head size 32"),
    ],
)
def test_cli_bad_input_one_line(argv, msg, tmp_path, capsys):
    assert cli_main(["mup", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgpt mup: error:") and msg in err and "\n" not in err


def test_transfer_smoke(data, tmp_path, capsys):
    res = run_transfer(
        widths=(32, 64),
        lrs=(1e-3, 1e-2, 1e-1),
        steps=12,
        batch=4,
        seq_len=16,
        eval_batches=2,
        data=data,
    )
    for param in ("sp", "mup"):
        for w in ("32", "64"):
            vals = res.losses[param][w]
            assert len(vals) == 3
            assert min(vals) < math.log(256)  # learned something beyond uniform bytes
        assert res.best_lr(param, 32) in res.lrs
    plot_transfer(res, tmp_path / "lr_transfer.png")
    assert (tmp_path / "lr_transfer.png").stat().st_size > 1000
    d = res.to_dict()
    assert set(d["best_lr"]) == {"sp", "mup"} and "drift_log2" in d


def test_cli_transfer(tmp_path, capsys):
    rc = cli_main(
        [
            "mup",
            "transfer",
            "--widths",
            "32,64",
            "--lrs",
            "1e-3,1e-2,1e-1",
            "--steps",
            "10",
            "--seq-len",
            "16",
            "--batch",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0 and "best LR per width" in capsys.readouterr().out
    d = json.loads((tmp_path / "lr_transfer.json").read_text())
    assert d["lrs"] == [1e-3, 1e-2, 1e-1] and set(d["best_lr"]["mup"]) == {"32", "64"}
    assert (tmp_path / "lr_transfer.png").read_bytes()[:4] == b"\x89PNG"
