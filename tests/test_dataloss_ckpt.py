"""Checkpoint and resume paths that lost a user's work (issue 26 items 1, 4, 6, 8, 9), each
reproduced on what the real trainer writes: tiny fp32 runs on CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_trainer import _write, losses, make_cfg, make_data

from cgpt.launch.cli import main as cli_main
from cgpt.train.loop import checkpoint as ckpt


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "bytes")


def _steps(run: Path) -> list[int]:
    return [s for s, _ in ckpt.published(run / "checkpoints")]


# ---------------------------------------------------------------------------- 1: save_steps
def test_save_steps_are_never_pruned_and_abandoned_folders_never_counted(tmp_path, data):
    d = make_cfg(tmp_path, data, steps=12, save_every=3, eval_every=0, keep_last=2)
    d["runtime"]["save_steps"] = [5]
    path = _write(tmp_path, d)
    assert cli_main(["train", str(path)]) == 0
    run = tmp_path / "run"
    assert _steps(run) == [5, 9, 12]  # step-5 is listed: kept beside the newest two
    # a rewind sets step-12 aside; the abandoned folder survives every later prune and is
    # not counted as one of the keep_last
    assert cli_main(["train", str(run), "--resume", "--from", "step-9"]) == 0
    abandoned = sorted((run / "checkpoints").glob("abandoned-*"))
    assert len(abandoned) == 1 and (abandoned[0] / "step-12" / ckpt.COMPLETE).is_file()
    assert _steps(run) == [5, 9, 12]
    assert len(losses(run)) == 12


# ---------------------------------------------------------------------------- 8: missing files
@pytest.fixture(scope="module")
def zero1_run(tmp_path_factory, data) -> Path:
    """A ZeRO-1 run stopped at step 6 (checkpoints step-3 and step-6); tests damage copies."""
    tmp = tmp_path_factory.mktemp("zero1")
    d = make_cfg(tmp, data, steps=9, save_every=3, eval_every=0, keep_last=3, zero_stage=1)
    assert cli_main(["train", str(_write(tmp, d)), "--set", "runtime.max_steps=6"]) == 0
    return tmp / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return dst


@pytest.mark.parametrize(
    "lose", ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"]
)
def test_a_checkpoint_missing_a_file_falls_back_to_the_previous(zero1_run, tmp_path, capsys, lose):
    run = _copy(zero1_run, tmp_path)
    before = losses(run)
    assert len(before) == 6
    (run / "checkpoints" / "step-6" / lose).unlink()  # e.g. deleted to save space
    capsys.readouterr()
    assert cli_main(["train", str(run), "--resume"]) == 0
    out = capsys.readouterr()
    assert f"step-6 is unusable ({lose} is missing)" in out.out + out.err
    # steps 4..6 were trained again from step-3: bitwise the same losses
    assert losses(run) == before


def test_a_universal_conversion_missing_a_file_is_converted_again(zero1_run, tmp_path, capsys):
    """ZeRO-1 -> ZeRO-2 goes through DeepSpeed's universal format; one exp_avg.pt of that
    conversion deleted: the next resume converts again instead of failing inside DeepSpeed."""
    run = _copy(zero1_run, tmp_path)
    grow = ["--set", "runtime.zero_stage=2", "--set", "runtime.max_steps=7"]
    assert cli_main(["train", str(run), "--resume", *grow]) == 0
    first = losses(run)
    zero = run / "checkpoints" / "step-6" / "universal" / "zero"
    lost = sorted(zero.glob("*/exp_avg.pt"))[0]
    lost.unlink()
    capsys.readouterr()
    assert cli_main(["train", str(run), "--resume", "--from", "step-6"]) == 0
    out = capsys.readouterr()
    assert "lost a file: converting again" in out.out + out.err
    assert lost.is_file() and losses(run) == first  # step 7 again, bitwise
