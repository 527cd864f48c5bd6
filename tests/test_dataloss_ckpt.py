"""Checkpoint and resume paths that lost a user's work (issue 26 items 1, 4, 6, 8, 9), each
reproduced on what the real trainer writes: tiny fp32 runs on CPU."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import (
    BYTE_EOS,
    child_env,
    losses,
    make_byte_data,
    make_cfg,
    tree_digest,
    write_run_config,
)

from cgpt.launch.cli import main as cli_main
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints.rewind import FAULT_ENV, INTENT
from cgpt.train.data.shards import open_token_data, write_token_data
from cgpt.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes")


def _steps(run: Path) -> list[int]:
    return [s for s, _ in ckpt.published(run / "checkpoints")]


def _refused(capsys, argv: list[str]) -> str:
    """The one line of a refusal before training (exit 2, no traceback)."""
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cgpt train: error: "), err
    return err


def _reprepare(folder: Path) -> None:
    """What `cgpt prepare --force` into the same folder does with other documents of the
    same sizes: the same ShardWriter replaces the folder, new sha256 in meta.json."""
    old = open_token_data(folder)
    train, val = np.array(old.train, dtype=np.int64), np.array(old.val, dtype=np.int64)
    write_token_data(folder, train[::-1].copy(), val, vocab_size=257, eos_id=BYTE_EOS)


# ---------------------------------------------------------------------------- 1: save_steps
def test_save_steps_are_never_pruned_and_abandoned_folders_never_counted(tmp_path, data):
    d = make_cfg(tmp_path, data, steps=12, save_every=3, eval_every=0, keep_last=2)
    d["runtime"]["save_steps"] = [5]
    path = write_run_config(tmp_path, d)
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
    assert cli_main(["train", str(write_run_config(tmp, d)), "--set", "runtime.max_steps=6"]) == 0
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


@pytest.mark.slow  # a DeepSpeed universal conversion, twice
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


# ---------------------------------------------------------------------------- 4: data identity
def test_data_moved_is_accepted_and_data_replaced_is_refused(tmp_path, data, capsys):
    src = tmp_path / "data"
    shutil.copytree(data, src)
    d = make_cfg(tmp_path, src, steps=5, save_every=2, eval_every=0, keep_last=5)
    assert (
        cli_main(["train", str(write_run_config(tmp_path, d)), "--set", "runtime.max_steps=2"]) == 0
    )
    run = tmp_path / "run"
    recorded = json.loads((run / "data.json").read_text())
    assert recorded["data.path"]["path"] == str(src)
    # the same data in another folder: accepted, with a note
    moved = tmp_path / "moved"
    src.rename(moved)
    capsys.readouterr()
    grow = ["--set", "runtime.max_steps=3"]
    assert cli_main(["train", str(run), "--resume", "--set", f"data.path={moved}", *grow]) == 0
    out = capsys.readouterr()
    assert f"data folder moved (data.path: {src} -> {moved})" in out.out + out.err
    # other documents of the same sizes in that folder: refused, nothing written
    _reprepare(moved)
    before = tree_digest(run)
    err = _refused(capsys, ["train", str(run), "--resume"])
    assert "the data changed since the run started (train of data.path" in err
    assert tree_digest(run) == before
    # the printed command, run as printed, accepts and records the change
    cmd = shlex.split(err.split("continue on the new data with: ")[1])
    assert cmd[:2] == ["cgpt", "train"] and "--allow-change" in cmd
    assert cli_main(cmd[1:] + ["--set", "runtime.max_steps=4"]) == 0
    rows = [json.loads(r) for r in (run / "changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 3
    old, new = rows[0]["changes"]["data"]
    assert old["data.path"]["train"] == recorded["data.path"]["train"] != new["data.path"]["train"]
    step4 = json.loads((run / "checkpoints" / "step-4" / "data.json").read_text())
    assert step4["data.path"]["train"] == new["data.path"]["train"]
    # a checkpoint from before the accepted change is still this run's
    assert cli_main(["train", str(run), "--resume", "--from", "step-2"]) == 0


# ---------------------------------------------------------------------------- 9: foreign ones
@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data) -> Path:
    """Stopped at step 6 of 9 (checkpoints step-3 and step-6); tests change copies."""
    tmp = tmp_path_factory.mktemp("base")
    d = make_cfg(tmp, data, steps=9, save_every=3, eval_every=0, keep_last=3)
    assert cli_main(["train", str(write_run_config(tmp, d)), "--set", "runtime.max_steps=6"]) == 0
    return tmp / "run"


def _other_run(tmp: Path, data: Path, **runtime) -> Path:
    """Another run of the same shape, 3 steps (checkpoint step-3)."""
    d = make_cfg(tmp, data, out="other", steps=9, save_every=3, eval_every=0, **runtime)
    assert (
        cli_main(
            ["train", str(write_run_config(tmp, d, "other.yaml")), "--set", "runtime.max_steps=3"]
        )
        == 0
    )
    return tmp / "other"


@pytest.mark.parametrize(
    "other",  # the last two train another run each: slow tier
    [
        "step",
        pytest.param("seed", marks=pytest.mark.slow),
        pytest.param("data", marks=pytest.mark.slow),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(base_run, tmp_path, data, capsys, other):
    run = _copy(base_run, tmp_path)
    cdir = run / "checkpoints"
    if other == "step":  # a step-3 state published as step-9
        shutil.copytree(cdir / "step-3", cdir / "step-9")
        argv, why = ["--resume"], "it holds the state of step 3, not 9"
    else:  # step-3 of a run with another seed, or trained on other data, copied over ours
        if other == "seed":
            foreign = _other_run(tmp_path, data, seed=8)
            why = "its config differs in runtime.seed"
        else:
            shutil.copytree(data, tmp_path / "data2")
            _reprepare(tmp_path / "data2")
            foreign = _other_run(tmp_path, tmp_path / "data2")
            why = "it was trained on other data"
        shutil.rmtree(cdir / "step-3")
        shutil.copytree(foreign / "checkpoints" / "step-3", cdir / "step-3")
        argv = ["--resume", "--from", "step-3"]
    before = tree_digest(run)
    err = _refused(capsys, ["train", str(run), *argv])
    assert f"is not this run's ({why}" in err and "; nothing was resumed or changed" in err
    assert tree_digest(run) == before  # no metrics dropped, nothing pruned or moved
    # the advice, followed literally, sets it aside; the run then goes on from its own step-6
    mv = shlex.split(err.split("set it aside: ")[1])
    assert mv[0] == "mv" and len(mv) == 3
    Path(mv[1]).rename(mv[2])
    capsys.readouterr()
    assert cli_main(["train", str(run), "--resume", "--set", "runtime.max_steps=7"]) == 0
    assert len(losses(run)) == 7 and losses(run)[:6] == losses(base_run)


# ---------------------------------------------------------------------------- 6: atomic rewind
@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["recorded", "config"])
def test_a_rewind_killed_midway_is_undone_or_finished_by_the_next_start(
    base_run, tmp_path, capsys, kill_after
):
    """SIGKILL of `--resume --from step-3 --set plan.lr=...` after it recorded the change
    but before config.yaml (undone), or right after config.yaml (finished): the plain
    --resume a requeue runs never trains the abandoned trajectory with the new LR."""
    run = _copy(base_run, tmp_path)
    rewind = ["--resume", "--from", "step-3", "--set", "plan.lr=0.001", "--allow-change", "plan.lr"]
    cgpt = str(Path(sys.executable).parent / "cgpt")
    proc = subprocess.run(
        [cgpt, "train", str(run), *rewind],
        env=child_env(**{FAULT_ENV: kill_after}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr  # killed where the hook says
    assert (run / INTENT).is_file()
    capsys.readouterr()
    assert cli_main(["train", str(run), "--resume", "--set", "runtime.max_steps=7"]) == 0
    out = capsys.readouterr()
    assert not (run / INTENT).exists()
    cfg_lr = yaml.safe_load((run / "config.yaml").read_text())["plan"]["lr"]
    changes = read_metrics(run / "changes.jsonl")
    abandoned = list((run / "checkpoints").glob("abandoned-*"))
    rows, base = read_metrics(run / "metrics.jsonl"), read_metrics(base_run / "metrics.jsonl")
    lrs = [r["lr"] for r in rows if "loss" in r]
    if kill_after == "recorded":  # before the commit: as if the rewind never ran
        assert "undid the rewind to step-3 (step 3)" in out.out + out.err
        assert cfg_lr == 3e-3 and changes == [] and abandoned == []
        assert losses(run)[:6] == losses(base_run)  # continued from its own step-6
    else:  # committed: the rewind is finished and recorded
        assert "finished the rewind to step-3 (step 3)" in out.out + out.err
        assert cfg_lr == 0.001 and len(changes) == 1
        assert changes[0]["changes"] == {"plan.lr": [3e-3, 0.001]}
        assert [p.name for p in abandoned[0].iterdir()] == ["step-6"]
        assert losses(run)[:3] == losses(base_run)[:3]
        assert lrs[3:] != [r["lr"] for r in base if "loss" in r][3:6]  # the new LR from step 4
    assert len(losses(run)) == 7 and _steps(run)[-1] == 7


class _Killed(BaseException):
    """Stands for a kill: nothing of the trainer catches it."""


def test_a_rewind_cut_short_never_leaves_the_new_lr_unrecorded(base_run, tmp_path, monkeypatch):
    """The rewind stops at its first checkpoint move (in process: the same point a SIGKILL
    test hits in a child); the plain --resume a requeue runs then either continues the old
    trajectory with the old LR or the rewound one with the change recorded, never a mix."""
    run = _copy(base_run, tmp_path)
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(src).name == "step-6":
            raise _Killed
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    rewind = ["--resume", "--from", "step-3", "--set", "plan.lr=0.001", "--allow-change", "plan.lr"]
    with pytest.raises(_Killed):
        cli_main(["train", str(run), *rewind])
    monkeypatch.setattr(os, "replace", real)
    assert cli_main(["train", str(run), "--resume", "--set", "runtime.max_steps=7"]) == 0
    lr = yaml.safe_load((run / "config.yaml").read_text())["plan"]["lr"]
    changes = read_metrics(run / "changes.jsonl")
    assert (lr, changes) == (3e-3, [])  # undone: nothing of it took effect
    assert losses(run)[:6] == losses(base_run) and len(losses(run)) == 7


def test_exporting_a_checkpoint_missing_a_file_is_one_line(zero1_run, tmp_path, capsys):
    run = _copy(zero1_run, tmp_path)
    step = run / "checkpoints" / "step-6"
    (step / "mp_rank_00_model_states.pt").unlink()
    capsys.readouterr()
    assert cli_main(["export", str(step), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "is incomplete (mp_rank_00_model_states.pt is missing)" in err
    assert not (tmp_path / "hf").exists()
