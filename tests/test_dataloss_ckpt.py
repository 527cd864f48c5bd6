"""Checkpoint and resume paths that lost a user's work (issue 26 items 1, 4, 6, 8, 9), each
reproduced on what the real trainer writes: tiny fp32 runs on CPU."""

from __future__ import annotations

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
