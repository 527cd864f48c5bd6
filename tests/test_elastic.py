"""Elastic resume: a run continues on another world size or ZeRO stage through DeepSpeed's
universal checkpoint format (cgpt.train.checkpoints.universal), with the per-step losses of an
uninterrupted run and every training window used exactly once per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import child_env, losses, make_byte_data, make_cfg, tree_digest, write_run_config

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints import universal
from cgpt.train.config import parse_run_config
from cgpt.train.data.shards import write_token_data
from cgpt.train.ports import free_port

SEQ = 32


# ---------------------------------------------------------------------------- deciding
@pytest.mark.parametrize(
    "saved, now, needed",
    [
        ((2, 1), (2, 1), False),  # same topology
        ((2, 0), (3, 0), False),  # ZeRO-0: every rank holds the whole state
        ((2, 1), (1, 1), True),
        ((1, 1), (3, 1), True),
        ((2, 2), (2, 1), True),
        ((2, 1), (2, 3), True),
        ((4, 3), (2, 2), True),
    ],
)
def test_which_resumes_go_through_a_universal_checkpoint(saved, now, needed):
    assert universal.needs_universal(Path("step-3"), saved, *now) is needed


@pytest.mark.parametrize("saved, now", [((1, 0), (1, 1)), ((2, 2), (2, 0)), ((2, 0), (1, 3))])
def test_zero0_conversions_are_refused_in_one_line(saved, now):
    with pytest.raises(CgptError) as e:
        universal.needs_universal(Path("step-3"), saved, *now)
    msg = str(e.value)
    fix = "runtime.zero_stage=0" if saved[1] == 0 else "runtime.zero_stage 1, 2 or 3"
    assert "\n" not in msg and f"resume with {fix}, on any number of ranks" in msg
    assert "ZeRO-0" in msg and "ds_to_universal" in msg


# ---------------------------------------------------------------------------- one process
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=6)


def _train(d: dict, resume: bool = False, **rt) -> dict:
    from cgpt.train.loop.trainer import train

    d = {**d, "runtime": {**d["runtime"], **rt}}
    return train(parse_run_config(d), resume=resume)


@pytest.mark.slow  # three in-process runs per case, ~15 s
@pytest.mark.parametrize("before, after", [(2, 1), (1, 3), (3, 2)])
def test_zero_stage_change_resumes_like_an_uninterrupted_run(tmp_path, data, before, after):
    """ZeRO-2 -> ZeRO-1, ZeRO-1 -> ZeRO-3 and ZeRO-3 -> ZeRO-2 at the same rank count:
    converted once (a crash during the conversion publishes nothing), the losses equal
    an uninterrupted run's, and a second resume from that checkpoint reuses the folder."""
    d = make_cfg(tmp_path, data, steps=6, batch=6, micro_batch=1, zero_stage=before, save_every=3)
    d["runtime"].update(eval_every=0)
    _train(d, out_dir=str(tmp_path / "straight"))
    _train(d, max_steps=3)
    step3 = tmp_path / "run" / "checkpoints" / "step-3"

    real = universal._complete_layout

    def crash(out):
        raise OSError(28, "No space left on device")

    universal._complete_layout = crash
    try:
        with pytest.raises(CgptError, match="universal conversion of .*No space left"):
            _train(d, resume=True, zero_stage=after)
    finally:
        universal._complete_layout = real
    assert not (step3 / "universal").exists()
    assert not list(step3.parent.glob("tmp-universal-*"))

    _train(d, resume=True, zero_stage=after)
    marker = json.loads((step3 / "universal" / "complete").read_text())
    assert marker["source"] == "step-3" and marker["world_size"] == 1
    assert (step3 / "latest_universal").read_text().strip() == "universal"
    state = ckpt.read_state(tmp_path / "run" / "checkpoints" / "step-6")
    assert state["zero_stage"] == after and state["world_size"] == 1
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "run")
    assert len(a) == len(b) == 6 and a[:3] == b[:3]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-5)

    # rewinding to step-3 again converts nothing and reproduces the same losses
    stamp = (step3 / "universal" / "complete").stat().st_mtime_ns
    _train(d, resume=True, zero_stage=after)  # completed: no change
    from cgpt.train.checkpoints.resume import ResumeRequest

    _train(d, resume=ResumeRequest(resume=True, from_step="step-3"), zero_stage=after)
    assert (step3 / "universal" / "complete").stat().st_mtime_ns == stamp
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "run")), torch.tensor(a), rtol=0, atol=1e-5
    )


@pytest.mark.slow  # one in-process run, ~6 s
def test_a_checkpoint_holding_code_is_refused_by_the_conversion(tmp_path, data, capsys):
    """The converter reads DeepSpeed's files through the restricted unpickler too: a
    tampered optimizer file is one line naming the global and the trust switch; nothing
    is published, no code runs."""
    from cgpt.launch.cli import main

    d = make_cfg(tmp_path, data, steps=6, batch=6, micro_batch=1, zero_stage=1, save_every=3)
    d["runtime"].update(eval_every=0, max_steps=3)
    cfg_path = write_run_config(tmp_path, d)
    assert main(["train", str(cfg_path)]) == 0
    step = tmp_path / "run" / "checkpoints" / "step-3"
    target = next(step.glob("*optim_states.pt"))

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"optimizer_state_dict": Payload()}, target)
    # a tamperer rewrites the manifest too (it finds lost files, not tampering)
    (step / ckpt.MANIFEST).write_text(json.dumps({"files": ckpt.manifest(step)}))
    capsys.readouterr()
    argv = ["train", str(cfg_path), "--resume", "--set", "runtime.zero_stage=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CGPT_TRUST_CHECKPOINTS" in err and "system" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pwned").exists()
    assert not (step / "universal").exists() and not list(step.parent.glob("tmp-universal-*"))


@pytest.mark.slow  # one in-process run, ~5 s
def test_zero0_to_zero1_is_refused_before_anything_is_written(tmp_path, data, capsys):
    from cgpt.launch.cli import main

    d = make_cfg(tmp_path, data, steps=6, batch=6, micro_batch=1, zero_stage=0, save_every=3)
    d["runtime"].update(eval_every=0, max_steps=3)
    cfg_path = write_run_config(tmp_path, d)
    assert main(["train", str(cfg_path)]) == 0
    before = tree_digest(tmp_path / "run")
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--resume", "--set", "runtime.zero_stage=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume with runtime.zero_stage=0," in err, err
    assert tree_digest(tmp_path / "run") == before


# ---------------------------------------------------------------------------- several ranks
# Each process records, for every optimizer step, the window indices its own loader hands to
# the model (its rank's share of the global stream).
_TRACED_TRAIN = """
import json, os, sys
from cgpt.train.data import loader as L

_real = L.TokenLoader.next_step

def next_step(self, G, micro_batch):
    share = G // self.world_size
    idx = self._stream(self.rank * share, share)
    row = dict(seen=self.samples_seen, G=G, ws=self.world_size, rank=self.rank, idx=idx.tolist())
    name = f"rank{self.rank}-{os.getpid()}.jsonl"
    with open(os.path.join(os.environ["TRACE_DIR"], name), "a") as f:
        f.write(json.dumps(row) + "\\n")
    return _real(self, G, micro_batch)

L.TokenLoader.next_step = next_step
from cgpt.train.loop.entry import main
sys.exit(main())
"""


def _launch(script: Path, ranks: int, args: list[str], trace: Path) -> subprocess.CompletedProcess:
    trace.mkdir(parents=True, exist_ok=True)
    if ranks == 1:
        cmd = [sys.executable, str(script)]
    else:
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), str(script)]
    return subprocess.run(
        cmd + args,
        env=child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TRACE_DIR=str(trace)),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=script.parent,
    )


def _global_stream(trace: Path) -> list[list[int]]:
    """Per optimizer step, the global window sequence (the ranks' shares in rank order);
    asserts each step was served exactly once by each of its ranks."""
    files = sorted(trace.glob("*.jsonl"))
    rows = [json.loads(ln) for f in files for ln in f.read_text().splitlines()]
    steps: dict[int, dict[int, dict]] = {}
    for r in rows:
        by_rank = steps.setdefault(r["seen"], {})
        assert r["rank"] not in by_rank, f"step at {r['seen']} served twice by rank {r['rank']}"
        by_rank[r["rank"]] = r
    out = []
    for seen in sorted(steps):
        by_rank = steps[seen]
        ws = by_rank[0]["ws"]
        assert sorted(by_rank) == list(range(ws)) and all(r["ws"] == ws for r in by_rank.values())
        out.append([i for r in range(ws) for i in by_rank[r]["idx"]])
    return out


@pytest.mark.slow  # five launches (1, 2, 1, 3 and 4 processes), ~2 minutes on 2 cores
def test_two_ranks_then_one_then_three_match_one_uninterrupted_rank(tmp_path):
    """2 ranks ZeRO-1 (steps 1-3) -> 1 rank (4-6) -> 3 ranks (7-9), global batch 6 over 20
    training windows (2.7 epochs): per-step losses equal an uninterrupted 1-rank run's to
    1e-5; the windows each rank fed its model form the uninterrupted run's global stream,
    every window exactly once per epoch; each checkpoint was converted once, by rank 0,
    into its universal folder. A resume on 4 ranks (6 does not split over 4) is refused
    naming the rank counts that do, before anything is written."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = np.frombuffer((root / "argparse.py").read_bytes(), np.uint8).astype(np.int64)
    n_windows = 20
    train_tokens = text[: n_windows * SEQ + 1]
    val_tokens = text[50_000 : 50_000 + 8 * SEQ + 1]
    data = tmp_path / "tiny"
    write_token_data(data, train_tokens, val_tokens, vocab_size=257, eos_id=256, source="bytes")
    d = make_cfg(tmp_path, data, steps=9, batch=6, micro_batch=1, zero_stage=1)
    d["runtime"].update(save_every=3, eval_every=0, eval_batches=1, log_every=1, keep_last=3)
    cfg = write_run_config(tmp_path, d)
    script = tmp_path / "traced_train.py"
    script.write_text(_TRACED_TRAIN)

    ref_out = tmp_path / "straight"
    r = _launch(script, 1, [str(cfg), "--set", f"runtime.out_dir={ref_out}"], tmp_path / "t-ref")
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "run"
    tr = tmp_path / "t-elastic"
    for ranks, upto in ((2, 3), (1, 6), (3, None)):
        args = [str(cfg)] + (["--resume"] if upto != 3 else [])
        args += ["--set", f"runtime.max_steps={upto}"] if upto else []
        r = _launch(script, ranks, args, tr)
        assert r.returncode == 0, f"{ranks} ranks:\n" + r.stdout[-3000:] + r.stderr[-3000:]
        if upto != 3:
            assert "through DeepSpeed's universal checkpoint format" in r.stdout + r.stderr
    cdir = run / "checkpoints"
    for step, source_ranks in ((3, 2), (6, 1)):
        marker = json.loads((cdir / f"step-{step}" / "universal" / "complete").read_text())
        assert (marker["source"], marker["world_size"]) == (f"step-{step}", source_ranks)
        assert "zero/optimizer_state.pt" in marker["files"]  # every file of the conversion
    assert ckpt.read_state(cdir / "step-9")["world_size"] == 3
    assert not list(cdir.glob("tmp-*"))

    a, b = losses(ref_out), losses(run)
    assert len(a) == len(b) == 9
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-5)

    ref, got = _global_stream(tmp_path / "t-ref"), _global_stream(tr)
    assert len(ref) == len(got) == 9 and got == ref
    flat = [i for step in got for i in step]
    assert len(flat) == 54
    for e in range(0, 54, n_windows):  # epochs 1 and 2 whole, 14 windows of epoch 3
        epoch = flat[e : e + n_windows]
        assert len(set(epoch)) == len(epoch)
        if len(epoch) == n_windows:
            assert sorted(epoch) == list(range(n_windows))

    before = tree_digest(run)
    r = _launch(script, 4, [str(cfg), "--resume"], tmp_path / "t-four")
    assert r.returncode != 0
    assert "cannot be split over 4 data-parallel ranks" in r.stderr
    assert "2 / 3 / 6 ranks" in r.stderr
    assert tree_digest(run) == before
