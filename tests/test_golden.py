"""Golden fp32 loss curve: catches silent numerical changes anywhere in the training path
(model, init, fused loss, optimizer, schedule, data order, DeepSpeed config).

A tiny model trains 12 steps through the real trainer (`cgpt train`, fp32, ZeRO-0, one
process) on synthetic data made here from a fixed bigram table (numpy's legacy RandomState,
whose stream numpy keeps stable). Every per-step loss must equal tests/golden/tiny_fp32.json
to 1e-6. A deliberate numerical change regenerates the file with

    CGPT_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

and says why in its commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from cgpt.launch.cli import main as cli_main
from cgpt.train.data.shards import write_token_data
from cgpt.train.metrics import read_metrics

GOLDEN = Path(__file__).parent / "golden" / "tiny_fp32.json"
VOCAB, STEPS = 64, 12


def bigram_tokens(n: int, seed: int) -> np.ndarray:
    """A Markov chain over VOCAB tokens whose next token is one of 4 likely successors."""
    rs = np.random.RandomState(seed)
    succ = rs.randint(0, VOCAB, size=(VOCAB, 4))
    out, t = np.empty(n, np.int64), 0
    picks, noise = rs.randint(0, 4, size=n), rs.randint(0, VOCAB, size=n)
    explore = rs.rand(n) < 0.1
    for i in range(n):
        t = int(noise[i]) if explore[i] else int(succ[t, picks[i]])
        out[i] = t
    return out


def test_tiny_fp32_loss_curve_is_golden(tmp_path):
    write_token_data(
        tmp_path / "data",
        bigram_tokens(40_000, 0),
        bigram_tokens(4_000, 1),
        vocab_size=VOCAB,
        eos_id=VOCAB - 1,
        source="bigram",
    )
    cfg = {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": VOCAB},
        "data": {"path": str(tmp_path / "data")},
        "plan": {
            "params": 30000,
            "seq_len": 32,
            "tokens": 32 * 8 * STEPS,
            "steps": STEPS,
            "global_batch_seqs": 8,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "decay_steps": STEPS - 2,
        },
        "runtime": {
            "out_dir": str(tmp_path / "run"),
            "micro_batch": 4,
            "zero_stage": 0,
            "precision": "fp32",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 0,
            "log_every": 1,
            "wandb": "off",
            "seed": 11,
            "export_hf": False,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", str(tmp_path / "run.yaml")]) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    got = [r["loss"] for r in rows if "loss" in r]
    assert len(got) == STEPS
    if os.environ.get("CGPT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"losses": got}, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    want = json.loads(GOLDEN.read_text())["losses"]
    assert got[-1] < got[0] - 0.15  # it learns: the curve is not a constant
    assert got == pytest.approx(want, rel=0, abs=1e-6)
