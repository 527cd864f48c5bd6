"""Cooldown branches of a warmup-stable-decay run: a branch is, bitwise, the dedicated WSD
run of its length; only its schedule differs from the stable run's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import losses, make_byte_data, make_cfg, tree_digest, write_run_config

from cgpt.launch.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=4)


def _wsd(tmp_path, data, out, steps):
    d = make_cfg(
        tmp_path, data, out=out, steps=steps, save_every=4, eval_every=0, keep_last=10, log_every=1
    )
    d["plan"].update(decay="wsd", cooldown_fraction=0.2, warmup_steps=2, decay_steps=steps - 2)
    return d


@pytest.mark.slow  # three short trainings
def test_branch_equals_the_dedicated_run_and_only_its_schedule_differs(tmp_path, data, capsys):
    stable = _wsd(tmp_path, data, "stable", 20)  # cooldown from step 16
    assert main(["train", str(write_run_config(tmp_path, stable, "stable.yaml"))]) == 0
    capsys.readouterr()
    assert (
        main(["branch", str(tmp_path / "stable"), "--step", "8", "--out", str(tmp_path / "branch")])
        == 0
    )
    out = capsys.readouterr().out
    assert "cgpt train" in out and "--resume" in out
    assert main(["train", str(tmp_path / "branch"), "--resume"]) == 0
    plan = yaml.safe_load((tmp_path / "branch" / "config.yaml").read_text())["plan"]
    assert (plan["steps"], plan["decay"], plan["cooldown_fraction"]) == (10, "wsd", 0.2)
    # the dedicated run of the branch's plan, from scratch
    dedicated = _wsd(tmp_path, data, "dedicated", 10)
    assert main(["train", str(write_run_config(tmp_path, dedicated, "dedicated.yaml"))]) == 0
    a, b = losses(tmp_path / "branch"), losses(tmp_path / "dedicated")
    assert len(a) == len(b) == 10 and a == b  # bitwise
    assert a[:8] == losses(tmp_path / "stable")[:8]  # shared stable phase
    lr = [r for r in losses(tmp_path / "branch", "lr")]
    assert lr[7] == 3e-3 and lr[9] == pytest.approx(3e-4)  # stable at 8, min_lr at the end


@pytest.mark.slow  # two short trainings
def test_bad_branches_are_one_line_and_write_nothing(tmp_path, data, capsys):
    stable = _wsd(tmp_path, data, "stable", 12)  # cooldown from step 10 (round(0.2*12)=2)
    assert main(["train", str(write_run_config(tmp_path, stable, "stable.yaml"))]) == 0
    linear = make_cfg(tmp_path, data, out="linear", steps=4, save_every=4, eval_every=0)
    assert main(["train", str(write_run_config(tmp_path, linear, "linear.yaml"))]) == 0
    capsys.readouterr()
    before = tree_digest(tmp_path)
    for argv, needle in (
        ([str(tmp_path / "linear"), "--step", "4"], "not a warmup-stable-decay run"),
        ([str(tmp_path / "stable"), "--step", "6"], "no complete checkpoint step-6"),
        ([str(tmp_path / "stable"), "--step", "12"], "already cooling down"),
        ([str(tmp_path / "stable"), "--step", "4", "--cooldown-fraction", "1.5"], "(0, 1)"),
    ):
        assert main(["branch", *argv, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert tree_digest(tmp_path) == before
