"""End-to-end training on a small real corpus (bytes of stdlib sources), bad input, and a
2-phase batch schedule checked against a plain-torch reference loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    losses,
    make_byte_data,
    make_cfg,
    nan_loss_after,
    tree_digest,
    write_run_config,
)

from cgpt.launch.cli import main as cli_main
from cgpt.train.config import parse_run_config
from cgpt.train.exit_codes import DIVERGED
from cgpt.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes")


def test_train_end_to_end_loss_falls_and_run_folder(tmp_path, data):
    from cgpt.train.loop.trainer import train

    cfg = parse_run_config(
        make_cfg(
            tmp_path, data, steps=40, export_hf=True, wandb="offline", eval_every=20, save_every=20
        )
    )
    s = train(cfg)
    run = Path(s["run_dir"])
    assert s["status"] == "completed" and s["steps"] == 40 and s["tokens"] == 40 * 8 * 32
    tr = losses(run)
    assert len(tr) == 40 and tr[0] > math.log(200)  # starts near uniform over 257 ids
    assert np.mean(tr[-5:]) < tr[0] - 1.5  # it learned the byte statistics
    rows = read_metrics(run / "metrics.jsonl")
    for key in ("step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"):
        assert all(key in r for r in rows if "loss" in r), key
    vals = losses(run, "val_loss")
    assert len(vals) == 2 and vals[-1] < vals[0] < math.log(257) and vals[-1] == s["val_loss"]
    for name in (
        "config.yaml",
        "ds_config.json",
        "loss.png",
        "model.safetensors",
        "summary.json",
        "hf/config.json",
        "checkpoints/step-40/complete",
    ):
        assert (run / name).is_file(), name
    ds = json.loads((run / "ds_config.json").read_text())
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (8, 2, 4)
    assert any((run / "wandb").rglob("*.wandb"))  # offline wandb run mirrored the metrics
    # the exported folder is what transformers loads, and it is the trained model
    from transformers import GPT2LMHeadModel

    from cgpt.model.io import load_model

    hf = GPT2LMHeadModel.from_pretrained(run / "hf").eval()
    ours = load_model(run / "model.safetensors").eval()
    x = torch.randint(0, 257, (2, 16))
    torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-4)


def test_two_phase_batch_schedule_matches_plain_torch(tmp_path, data):
    """The 13B-style batch switch (4 -> 8 sequences) through DeepSpeed gives the losses of a
    hand-written torch loop: same init, batches, AdamW groups, LR schedule and clipping."""
    from cgpt.model import GPT
    from cgpt.train.data.loader import TokenLoader
    from cgpt.train.loop.optim import param_groups
    from cgpt.train.loop.trainer import train
    from cgpt.train.plan.schedule import global_batch_at, lr_at

    d = make_cfg(tmp_path, data, steps=6, batch=4, eval_every=0, save_every=0)
    d["plan"]["batch_schedule"] = [
        {"global_batch_seqs": 4, "steps": 3, "warmup_steps": 2, "decay_steps": 1},
        {
            "global_batch_seqs": 8,
            "steps": 3,
            "schedule_start_step": 1,
            "warmup_steps": 0,
            "decay_steps": 3,
            "decay": "cosine",
        },
    ]
    cfg = parse_run_config(d)
    s = train(cfg)
    got = losses(Path(s["run_dir"]))
    assert s["tokens"] == (3 * 4 + 3 * 8) * 32
    torch.manual_seed(cfg.runtime.seed)
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.plan.weight_decay),
        lr=1.0,
        betas=cfg.plan.adam_betas,
        eps=cfg.plan.adam_eps,
    )
    loader = TokenLoader(data, 32, seed=cfg.runtime.seed)
    want = []
    for step in range(6):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg.plan, step) * g["lr_scale"]
        micro = loader.next_step(global_batch_at(cfg.plan, step), 2)
        total = 0.0
        for x, y in micro:
            loss = model(x, y)
            (loss / len(micro)).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.plan.grad_clip)
        opt.step()
        opt.zero_grad()
        want.append(total / len(micro))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- bad input
def _cli_error(capsys, argv, code: int = 2, started: bool = False) -> str:
    """The error line; ``started``: the run printed its banner (and steps) before it."""
    assert cli_main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if started:
        err = err.splitlines()[-1]
    assert err.startswith("cgpt train: error:")
    return err


def test_mistyped_key_names_nearest(tmp_path, data, capsys):
    d = make_cfg(tmp_path, data)
    d["runtime"]["micro_bach"] = d["runtime"].pop("micro_batch")
    err = _cli_error(capsys, ["train", str(write_run_config(tmp_path, d))])
    assert "runtime.micro_bach" in err and "'micro_batch'" in err
    err = _cli_error(
        capsys,
        [
            "train",
            str(write_run_config(tmp_path, make_cfg(tmp_path, data))),
            "--set",
            "runtime.zero_stag=1",
        ],
    )
    assert "zero_stage" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model": {"vocab_size": 200}}, "add --set model.vocab_size=257"),
        ({"runtime": {"precision": "fp16"}}, "fp16 needs a CUDA GPU"),
        ({"runtime": {"micro_batch": 3}}, "feasible micro-batches"),
        ({"model": {"n_layer": 80, "n_embd": 8192, "n_head": 64}}, "memory"),
    ],
)
def test_bad_input_leaves_no_run_folder(tmp_path, data, capsys, change, needle):
    d = make_cfg(tmp_path, data)
    for section, kv in change.items():
        d[section].update(kv)
    err = _cli_error(capsys, ["train", str(write_run_config(tmp_path, d))])
    assert needle in err, err
    assert not (tmp_path / "run").exists()


def test_existing_run_and_changed_resume_are_refused_untouched(tmp_path, data, capsys):
    d = make_cfg(tmp_path, data, steps=4, save_every=0, eval_every=0)
    path = write_run_config(tmp_path, d)
    assert cli_main(["train", str(path)]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    before = tree_digest(run)
    err = _cli_error(capsys, ["train", str(path)])  # a fresh run into a used folder
    assert "--resume" in err
    d["model"]["n_embd"] = 64
    d["data"]["path"] = str(tmp_path / "other")
    make_byte_data(tmp_path / "other", n_files=3)
    err = _cli_error(capsys, ["train", str(write_run_config(tmp_path, d)), "--resume"])
    assert "model.n_embd" in err and "data.path" in err
    assert tree_digest(run) == before


def test_tokenizer_mismatch_is_refused(tmp_path, data, capsys):
    from cgpt.train.data.tokenizer import train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer("stdlib:max_docs=30", 500, tok)
    d = make_cfg(tmp_path, data)
    d["data"]["tokenizer"] = str(tok)
    err = _cli_error(capsys, ["train", str(write_run_config(tmp_path, d))])
    assert "tokenizer" in err and "vocab" in err
    assert not (tmp_path / "run").exists()


def test_divergence_stops_without_saving(tmp_path, data, capsys):
    """A non-finite loss at step 8 stops the run naming the step and the last good
    checkpoint (step 5); nothing is saved after it."""
    d = make_cfg(tmp_path, data, steps=20, save_every=5, eval_every=0)
    with nan_loss_after(7 * 4):  # 4 micro-batches per step: step 8 onwards
        err = _cli_error(
            capsys, ["train", str(write_run_config(tmp_path, d))], DIVERGED, started=True
        )
    assert "loss became nan at step 8" in err and "step-5" in err
    from cgpt.train.checkpoints import checkpoint as ckpt

    assert [s for s, _ in ckpt.published(tmp_path / "run" / "checkpoints")] == [5]
    assert len(losses(tmp_path / "run")) == 7


def test_zero3_partitioned_head_matches_zero0(tmp_path, data):
    """The fused loss reads lm_head.weight outside lm_head's forward; under ZeRO-3 (weights
    partitioned: 257 x 512 is above DeepSpeed's 1e5-element persistence threshold) DeepSpeed
    must gather it there. Same losses as ZeRO-0."""
    from cgpt.train.loop.trainer import train

    runs = {}
    for stage in (3, 0):
        d = make_cfg(
            tmp_path,
            data,
            steps=4,
            zero_stage=stage,
            save_every=0,
            eval_every=0,
            out_dir=str(tmp_path / f"z{stage}"),
        )
        d["model"].update(n_embd=512, n_head=8)
        d["plan"]["params"] = 10**6
        assert train(parse_run_config(d))["status"] == "completed"
        runs[stage] = losses(tmp_path / f"z{stage}")
    assert len(runs[3]) == 4
    torch.testing.assert_close(torch.tensor(runs[3]), torch.tensor(runs[0]), rtol=1e-5, atol=1e-5)
