"""Data-loss paths on the filesystem (issue 26 items 2, 3, 7, 10, 15): `export --force` never
replaces a run, data or source folder; no file is created or truncated through a symbolic
link; a branch is published whole; two sweeps on one folder; stale temporary folders of a
killed writer are removed by the next one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_env, make_byte_data, make_cfg, tree_digest, write_run_config

from cgpt.launch.cli import main

CGPT = str(Path(sys.executable).with_name("cgpt"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """A real 12-step warmup-stable-decay run with checkpoints at steps 4, 8 and 12."""
    tmp = tmp_path_factory.mktemp("run")
    d = make_cfg(tmp, data, out="run", steps=12, save_every=4, eval_every=0, keep_last=10)
    d["runtime"]["log_every"] = 1
    d["plan"].update(decay="wsd", cooldown_fraction=0.2, warmup_steps=2, decay_steps=10)
    assert main(["train", str(write_run_config(tmp, d, "run.yaml"))]) == 0
    return tmp / "run"


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"cgpt {verb}: error:"), err
    return err


# ---- item 2: export --force replaces only a previous export --------------------------------
def test_export_force_never_replaces_the_run_data_or_source(run, data, tmp_path, capsys):
    before_run, before_data = tree_digest(run), tree_digest(data)
    step = run / "checkpoints" / "step-8"
    for src, out in (
        (run, run),  # the run itself
        (step, run),  # the folder holding the source
        (step, run / "checkpoints"),
        (run, data),  # a data folder
        (run, run.parent),  # a folder holding the source
        (run / "model.safetensors", run / "model.safetensors"),  # the source file
    ):
        assert main(["export", str(src), str(out), "--force", "--no-verify"]) == 2
        err = _one_line_error(capsys, "export")
        assert "--force replaces only" in err, err
    assert tree_digest(run) == before_run and tree_digest(data) == before_data
    # a previous export is what --force replaces
    out = tmp_path / "hf"
    assert main(["export", str(step), str(out), "--no-verify"]) == 0
    first = (out / "model.safetensors").read_bytes()
    assert main(["export", str(run), str(out), "--force", "--no-verify"]) == 0
    assert (out / "model.safetensors").read_bytes() != first  # step 12's weights, not step 8's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left


# ---- item 3: no file is created or truncated through a symbolic link ------------------------
def _plant_lock_link(folder: Path, tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious bytes\n" * 100)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".cgpt.lock").symlink_to(victim)
    return victim


def test_symlink_at_run_lock_is_refused_and_victim_untouched(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=True)
    (copy / ".cgpt.lock").unlink()
    victim = _plant_lock_link(copy, tmp_path)
    before = victim.read_bytes()
    assert main(["train", str(copy), "--resume"]) == 2
    err = _one_line_error(capsys, "train")
    assert "symbolic link" in err and ".cgpt.lock" in err, err
    assert victim.read_bytes() == before
    assert (copy / ".cgpt.lock").is_symlink()  # refused, not removed either


def test_symlink_at_prepare_lock_is_refused_and_victim_untouched(tmp_path, capsys):
    from helpers import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", vocab_size=280)
    out = tmp_path / "data"
    victim = _plant_lock_link(out, tmp_path)
    before = victim.read_bytes()
    argv = ["prepare", "--input", "stdlib:max_docs=3", "--tokenizer", str(tok), "--out", str(out)]
    assert main(argv) == 2
    err = _one_line_error(capsys, "prepare")
    assert "symbolic link" in err, err
    assert victim.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [".cgpt.lock"]


def test_hard_link_at_lock_is_refused(tmp_path):
    from cgpt.model.errors import CgptError
    from cgpt.train.lock import FolderLock

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"x" * 1000)
    (tmp_path / "f").mkdir()
    os.link(victim, tmp_path / "f" / ".cgpt.lock")
    with pytest.raises(CgptError, match="hard link"):
        FolderLock(tmp_path / "f").acquire()
    assert victim.read_bytes() == b"x" * 1000


def test_atomic_writers_replace_a_link_never_its_target(tmp_path):
    """config.yaml, summary.json, metrics rewrites: the rename replaces a link planted at
    the name; the file it pointed to keeps its bytes."""
    from cgpt.model.files import write_atomic

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (tmp_path / "config.yaml").symlink_to(victim)
    write_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "config.yaml").is_symlink()
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"


def test_metrics_file_is_not_appended_through_a_link(tmp_path):
    from cgpt.model.errors import CgptError
    from cgpt.train.metrics import MetricsLogger

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(CgptError, match="symbolic link"):
        MetricsLogger(tmp_path / "run", enabled=True, total_steps=1, start_step=0)
    assert victim.read_bytes() == b"keep me"


def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- item 10: one sweep per folder ---------------------------------------------------------
@pytest.mark.slow  # a real `cgpt sweep` process
def test_second_sweep_on_a_folder_is_refused(tmp_path, capsys):
    from helpers import SWEEP_SIZES, make_sweep_data, sweep_dict, write_sweep

    # 25000 steps: the first sweep is still training when the second starts
    d = sweep_dict(
        tmp_path, make_sweep_data(tmp_path / "data"), sizes=[SWEEP_SIZES[0]], tokens_per_param=2000
    )
    path = write_sweep(tmp_path, d)
    lock = tmp_path / "sweep" / ".cgpt.lock"
    first = subprocess.Popen(
        [CGPT, "sweep", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(PYTHONWARNINGS="ignore"),
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: any(p.stat().st_size for p in lock.parent.glob("runs/*/metrics.jsonl")),
            180,
            "the first sweep's first metrics row",
        )
        assert lock.read_text().strip()  # its holder note
        assert main(["sweep", str(path)]) == 2
        err = _one_line_error(capsys, "sweep")
        assert "sweep folder" in err and "in use by pid" in err, err
        assert first.poll() is None  # the first sweep goes on, nothing marked failed
        assert not (tmp_path / "sweep" / "results.jsonl").exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(60)


# ---- item 7: a branch is published whole -----------------------------------------------------
def _stable_copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "stable"
    shutil.copytree(run, copy, symlinks=True)
    return copy


def test_branch_of_a_run_whose_metrics_end_mid_row(run, tmp_path, capsys):
    """What a SIGKILL during an append leaves: the last row cut short, no newline."""
    stable = _stable_copy(run, tmp_path)
    with open(stable / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 2.5')
    out = tmp_path / "branch"
    assert main(["branch", str(stable), "--step", "4", "--out", str(out)]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert json.loads((out / "branch.json").read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branch", "stable"]


def test_interrupted_branch_leaves_nothing_to_resume(run, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the checkpoint is linked: no branch folder (that `cgpt train --resume`
    would train), no temporary folder; the next branch to the same folder works."""
    stable = _stable_copy(run, tmp_path)
    out = tmp_path / "branch"
    real_link, calls = os.link, []

    def link_then_interrupt(a, b, *args, **kw):
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_link(a, b, *args, **kw)

    monkeypatch.setattr(os, "link", link_then_interrupt)
    assert main(["branch", str(stable), "--step", "4", "--out", str(out)]) != 0
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(os, "link", real_link)
    assert not out.exists() and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stable"]
    assert main(["branch", str(stable), "--step", "4", "--out", str(out)]) == 0
    assert (out / "branch.json").is_file()


# ---- item 15: housekeeping -----------------------------------------------------------------
def _kill_when(argv: list[str], cond, what: str) -> None:
    """Start `cgpt ARGV`, SIGKILL it as soon as ``cond()`` holds (what a preemption or the
    OOM killer does), and reap it."""
    p = subprocess.Popen(
        [CGPT, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(PYTHONWARNINGS="ignore"),
        start_new_session=True,
    )
    try:
        _wait_for(lambda: cond() or p.poll() is not None, 300, what)
        assert p.poll() is None, f"cgpt {argv[0]} ended before {what}"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(60)


def _hidden(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f".{name}.*"))


@pytest.mark.slow  # a real export process, killed
def test_killed_export_leaves_a_temporary_folder_the_next_export_removes(run, tmp_path):
    out = tmp_path / "hf"
    _kill_when(
        ["export", str(run), str(out)],  # verifying through transformers: seconds to kill in
        lambda: _hidden(tmp_path, "hf") and True,
        "the export's temporary folder",
    )
    assert _hidden(tmp_path, "hf") and not out.exists()
    assert main(["export", str(run), str(out), "--no-verify"]) == 0
    assert _hidden(tmp_path, "hf") == [] and (out / "model.safetensors").is_file()


@pytest.mark.slow  # a real prepare process, killed
def test_killed_prepare_leaves_a_temporary_folder_the_next_prepare_removes(tmp_path, capsys):
    from helpers import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", vocab_size=280)
    out = tmp_path / "data"
    argv = ["prepare", "--tokenizer", str(tok), "--out", str(out), "--num-proc", "1"]
    _kill_when(
        [*argv, "--input", "stdlib:max_docs=400"],
        lambda: _hidden(tmp_path, "data"),
        "prepare's temporary folder",
    )
    assert _hidden(tmp_path, "data")
    assert main([*argv, "--input", "stdlib:max_docs=3"]) == 0
    assert _hidden(tmp_path, "data") == [] and (out / "meta.json").is_file()


def test_a_failed_latest_is_a_warning_not_a_failed_checkpoint(data, tmp_path, capsys, monkeypatch):
    """Out of inodes after the publishing rename: only `checkpoints/latest` failed; the
    checkpoint is saved and the run goes on (the message once said the save failed)."""
    import errno

    from cgpt.train.checkpoints import checkpoint

    real = checkpoint.write_text_atomic

    def no_inode_for_latest(path, text):
        if Path(path).name == "latest":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(checkpoint, "write_text_atomic", no_inode_for_latest)
    d = make_cfg(tmp_path, data, out="run", steps=4, save_every=2, eval_every=0, keep_last=5)
    assert main(["train", str(write_run_config(tmp_path, d, "run.yaml"))]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step-2 is saved and complete; only" in err and "latest" in err, err
    assert "could not save checkpoint" not in err
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-2", "step-4"]


def test_plan_train_line_quotes_a_path_with_spaces(tmp_path, capsys):
    import re
    import shlex

    from helpers import byte_token_folder

    data = byte_token_folder(tmp_path / "my data", 120 * 64, 4 * 65, vocab_size=300)
    out = tmp_path / "my runs" / "run 1.yaml"
    out.parent.mkdir()
    argv = ["--layers", "2", "--width", "64", "--seq-len", "64", "--batch-seqs", "8"]
    assert main(["plan", *argv, "--data", str(data), "--write", str(out)]) == 0
    line = re.search(r"train it with: (.*)\)$", capsys.readouterr().out, re.M)
    assert line and shlex.split(line.group(1)) == ["cgpt", "train", str(out)], line
    assert out.is_file()
