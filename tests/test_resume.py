"""Exact resume: a run stopped (max_steps, SIGTERM, or a crash during a save) and resumed
gives bitwise the per-step losses of a straight run (fp32, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_env, losses, make_byte_data, make_cfg, write_run_config

from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.config import parse_run_config
from cgpt.train.exit_codes import PREEMPTED


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes")


def _train(d: dict, resume: bool = False, **rt) -> dict:
    from cgpt.train.loop.trainer import train

    d = {**d, "runtime": {**d["runtime"], **rt}}
    return train(parse_run_config(d), resume=resume)


def test_resume_is_bitwise_exact(tmp_path, data):
    k = 7
    d = make_cfg(tmp_path, data, steps=2 * k, save_every=5, eval_every=7)
    _train(d, out_dir=str(tmp_path / "straight"))
    first = _train(d, max_steps=k)
    assert first["status"] == "stopped" and first["steps"] == k
    resumed = _train(d, resume=True)
    assert resumed["steps"] == 2 * k and resumed["status"] == "completed"
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "run")
    assert len(a) == len(b) == 2 * k
    assert a == b  # bitwise: same floats after the resume
    assert losses(tmp_path / "straight", "val_loss") == losses(tmp_path / "run", "val_loss")
    # keep_last=2 pruned older checkpoints; the newest is the final step
    assert [s for s, _ in ckpt.published(tmp_path / "run" / "checkpoints")] == [10, 14]


def test_interrupted_save_is_ignored_by_resume(tmp_path, data, monkeypatch):
    """A crash after DeepSpeed wrote tmp-step-10 but before the publish: --resume uses
    step-5 and still reproduces the straight run."""
    d = make_cfg(tmp_path, data, steps=12, save_every=5, eval_every=0)
    straight = _train(d, out_dir=str(tmp_path / "straight"))
    real, calls = ckpt.rng_state, []

    def crash_on_second_save():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated kill during save")
        return real()

    monkeypatch.setattr(ckpt, "rng_state", crash_on_second_save)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _train(d)
    monkeypatch.setattr(ckpt, "rng_state", real)
    cdir = tmp_path / "run" / "checkpoints"
    assert (cdir / "tmp-step-10").is_dir() and not (cdir / "step-10").exists()
    assert ckpt.newest(cdir)[0] == 5
    resumed = _train(d, resume=True)
    assert resumed["steps"] == 12 and straight["steps"] == 12
    assert losses(tmp_path / "straight") == losses(tmp_path / "run")
    assert not (cdir / "tmp-step-10").exists()  # cleaned up by the next successful save


@pytest.mark.slow
def test_sigterm_saves_and_the_printed_command_resumes_this_run(tmp_path, data):
    """SIGTERM of `cgpt train run.yaml --set runtime.out_dir=X --set ...` saves a checkpoint
    and prints a resume command; run literally from another directory, that command
    continues run X (not a fresh run elsewhere) and matches an uninterrupted run."""
    import shlex

    upto = 60
    d = make_cfg(
        tmp_path,
        data,
        steps=3000,
        save_every=0,
        eval_every=0,
        log_every=1,
        out_dir=str(tmp_path / "default-out"),
    )
    cfg_path = write_run_config(tmp_path, d)
    out_dir = tmp_path / "elsewhere" / "run"
    env = child_env(PYTHONUNBUFFERED="1")  # a fresh plain run, not a rank of this process
    cgpt = str(Path(sys.executable).parent / "cgpt")
    proc = subprocess.Popen(
        [
            cgpt,
            "train",
            str(cfg_path),
            "--set",
            f"runtime.out_dir={out_dir}",
            "--set",
            f"runtime.max_steps={upto}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED, out  # a checkpointed stop is not a success
    line = [ln for ln in out.splitlines() if "resume with: " in ln][-1]
    command = line.split("resume with: ", 1)[1]
    assert command == f"cgpt train {out_dir} --resume"
    stopped = ckpt.newest(out_dir / "checkpoints")[0]
    assert 3 <= stopped < upto
    argv = shlex.split(command)
    other_cwd = tmp_path / "somewhere-else"
    other_cwd.mkdir()
    res = subprocess.run(
        [cgpt, *argv[1:]], cwd=other_cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "default-out").exists() and not any(other_cwd.iterdir())
    straight = _train(d, out_dir=str(tmp_path / "straight"), max_steps=upto)
    assert straight["steps"] == upto
    # three processes (interrupted, resumed, this one): equal to float noise. Seen once in
    # CI: 1e-7 differences after the resume only, not reproduced locally (CPU math libraries
    # may pick their threading per process). Bitwise resume is asserted in-process by
    # test_resume_is_bitwise_exact and the tests below.
    assert losses(out_dir) == pytest.approx(losses(tmp_path / "straight"), rel=0, abs=1e-6)


@pytest.mark.slow
def test_a_closed_terminal_saves_and_the_printed_command_resumes(tmp_path, data):
    """`cgpt train` on a terminal that closes (its window, an ssh connection): the hangup is
    a stop like SIGTERM, though every later write to that terminal fails: a checkpoint,
    exit 75, summary.json saying so. Typed again on a new terminal, the same command names
    the way on; followed, it finishes the run. (Before: killed by SIGHUP, nothing saved;
    or, had it ignored SIGHUP, dead at its next progress line with EIO.)"""
    import shlex

    from helpers import Terminal, metrics_steps, wait_until

    upto = 60
    d = make_cfg(tmp_path, data, steps=3000, save_every=0, eval_every=0, log_every=1)
    d["runtime"]["max_steps"] = upto
    cfg = write_run_config(tmp_path, d)
    run, env = tmp_path / "run", child_env(PYTHONUNBUFFERED="1")
    cgpt = str(Path(sys.executable).parent / "cgpt")
    term = Terminal([cgpt, "train", str(cfg)], env)
    try:
        wait_until(lambda: len(metrics_steps(run)) >= 3, 300, "three steps", 0.1, term.alive)
        term.close()
        assert term.proc.wait(timeout=300) == PREEMPTED, term.output[-3000:]
    finally:
        term.kill()
    summary = json.loads((run / "summary.json").read_text())
    stopped = ckpt.newest(run / "checkpoints")[0]
    assert summary["status"] == "preempted" and 3 <= summary["steps"] == stopped < upto
    again = subprocess.run([cgpt, "train", str(cfg)], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "continue it with: " in again.stderr, again.stderr
    command = again.stderr.split("continue it with: ", 1)[1].split(" (or ")[0]
    res = subprocess.run(
        [cgpt, *shlex.split(command)[1:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert metrics_steps(run)[-1] == upto and "resumed from" in res.stdout + res.stderr


@pytest.mark.slow  # bf16 engine build and two runs: ~20 s
def test_bf16_zero1_trains_and_resumes_exactly(tmp_path, data):
    """The default precision (bf16, ZeRO-1): DeepSpeed's BF16_Optimizer with fp32 gradient
    accumulation and master weights; its checkpoint resumes to the same losses."""
    import json

    k = 6
    d = make_cfg(
        tmp_path,
        data,
        steps=2 * k,
        batch=8,
        micro_batch=2,
        precision="bf16",
        zero_stage=1,
        save_every=k,
        eval_every=k,
    )
    _train(d, out_dir=str(tmp_path / "straight"))
    ds = json.loads((tmp_path / "straight" / "ds_config.json").read_text())
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["bf16"]["enabled"]
    a = losses(tmp_path / "straight")
    assert a[-1] < a[0] - 0.5  # it learns
    from cgpt.train.metrics import read_metrics

    norms = [
        r["grad_norm"]
        for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")
        if "grad_norm" in r
    ]
    assert norms and all(n is not None and n > 0 for n in norms)
    _train(d, max_steps=k)
    _train(d, resume=True)
    assert losses(tmp_path / "run") == a


@pytest.mark.parametrize("stage, precision", [(2, "bf16"), (3, "fp32")])
def test_zero_checkpoints_resume_through_the_restricted_unpickler(tmp_path, data, stage, precision):
    """DeepSpeed's ZeRO optimizer files load with weights_only=True (its data types
    allow-listed): the resumed losses equal a straight run's."""
    d = make_cfg(
        tmp_path, data, steps=6, zero_stage=stage, precision=precision, save_every=3, eval_every=0
    )
    _train(d, out_dir=str(tmp_path / "straight"))
    _train(d, max_steps=3)
    _train(d, resume=True)
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")


def test_a_checkpoint_holding_code_is_refused(tmp_path, data, capsys):
    """A pickle that would run code on load (a tampered checkpoint file) is not loaded:
    one message naming the offending global and the trust switch, exit 2, folder untouched."""
    from cgpt.launch.cli import main

    d = make_cfg(tmp_path, data, steps=6, save_every=3, eval_every=0, max_steps=3)
    cfg_path = write_run_config(tmp_path, d)
    assert main(["train", str(cfg_path)]) == 0
    step = tmp_path / "run" / "checkpoints" / "step-3"
    target = next(step.glob("mp_rank_00_model_states.pt"))

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import torch

    torch.save({"module": Payload()}, target)  # what a tampered torch.save file looks like
    # whoever can edit the folder rewrites its manifest too (the manifest finds files lost
    # or cut short, not tampering): the restricted unpickler must still refuse the file
    listed = ckpt.manifest(step)
    (step / ckpt.MANIFEST).write_text(json.dumps({"files": listed}))
    before = sorted(p.name for p in step.iterdir())
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--resume", "--set", "runtime.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert (
        "CGPT_TRUST_CHECKPOINTS" in err and "system" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in step.iterdir()) == before
