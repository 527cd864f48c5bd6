"""`cgpt bench`: tiny shape, side by side with transformers, JSON and text output."""

from __future__ import annotations

import json

import pytest
import yaml

from cgpt.launch.cli import main as cli_main
from cgpt.model import flops_per_token_mfu
from cgpt.model.config import GPTConfig


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "n_layer": 2,
                    "n_embd": 64,
                    "n_head": 4,
                    "vocab_size": 512,
                    "n_positions": 64,
                },
                "data": {"path": "unused"},
                "plan": {
                    "params": 1,
                    "seq_len": 64,
                    "tokens": 1,
                    "steps": 1,
                    "global_batch_seqs": 4,
                    "lr": 1e-3,
                    "min_lr": 1e-4,
                    "warmup_steps": 0,
                    "decay_steps": 1,
                },
                "runtime": {"micro_batch": 4},
            }
        )
    )
    return p


@pytest.mark.slow  # two models side by side for several steps: ~30 s on 2 cores
def test_bench_json_side_by_side(tiny_yaml, capsys):
    assert (
        cli_main(["bench", str(tiny_yaml), "--steps", "3", "--warmup", "1", "--hf", "--json"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    # the run config's defaults, as cgpt train: bf16 on DeepSpeed ZeRO-1
    assert (r["seq_len"], r["micro_batch"], r["device"][:3], r["precision"], r["zero_stage"]) == (
        64,
        4,
        "cpu",
        "bf16",
        1,
    )
    ours, hf = r["results"]
    assert (ours["model"], hf["model"]) == ("cgpt", "transformers")
    for m in (ours, hf):
        assert m["steps"] == 3 and m["step_ms"] > 0 and m["mfu"] is None  # no peak on CPU
        assert m["tokens_per_s"] == pytest.approx(4 * 64 / (m["step_ms"] / 1e3))
        fpt = flops_per_token_mfu(
            GPTConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64), 64
        )
        assert m["tflops"] == pytest.approx(fpt * m["tokens_per_s"] / 1e12)
    assert r["speedup_vs_hf"] == pytest.approx(hf["step_ms"] / ours["step_ms"])
    # both train a random init on random tokens: losses near ln(512) = 6.24
    assert all(5.5 < v < 7.0 for v in r["final_loss"].values())


@pytest.mark.slow  # a DeepSpeed engine benchmark run
def test_bench_text_fp32_and_bad_input(tiny_yaml, capsys):
    assert (
        cli_main(
            [
                "bench",
                str(tiny_yaml),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--precision",
                "fp32",
                "--zero-stage",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "tok/s" in out and "cgpt" in out and "MFU" in out and "fp32, ZeRO-0" in out
    assert cli_main(["bench", "7B-typo", "--steps", "1"]) == 2
    assert "error" in capsys.readouterr().err
    assert cli_main(["bench", str(tiny_yaml), "--seq-len", "128"]) == 2
    assert "n_positions" in capsys.readouterr().err


@pytest.mark.slow  # two engines side by side
def test_bench_hf_in_the_same_engine(tiny_yaml, capsys):
    assert (
        cli_main(
            [
                "bench",
                str(tiny_yaml),
                "--steps",
                "1",
                "--warmup",
                "1",
                "--hf",
                "--hf-deepspeed",
                "--plain-loss",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["reference_loop"] == "deepspeed" and r["fused_loss"] is False
    assert [m["model"] for m in r["results"]] == ["cgpt", "transformers"]
    assert all(5.5 < v < 7.0 for v in r["final_loss"].values())
