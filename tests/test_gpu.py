"""GPU paths: bf16 training through DeepSpeed on CUDA, and MFU from the device table.

Skipped (by conftest) where CUDA is absent, with that reason.
"""

from __future__ import annotations

import math

import pytest
import torch

from cgpt.train.bench import bench
from cgpt.train.metrics import read_metrics
from cgpt.train.runconfig import parse_run_config
from test_trainer import make_cfg, make_data


@pytest.mark.gpu
def test_bench_reports_mfu_on_cuda():
    out = bench("111M", steps=3, warmup=1, seq_len=512, micro_batch=4, n_layer=2,
                device="cuda", compare_hf=True)
    ours = out["results"][0]
    assert out["precision"] == "bf16" and out["device"] != "cpu"
    assert ours["tokens_per_s"] > 0 and ours["peak_memory_bytes"] > 0
    if out["peak_flops"]:  # a GPU in the device table
        assert 0 < ours["mfu"] < 1
    assert math.isfinite(out["final_loss"]["cgpt"])


@pytest.mark.gpu
def test_bf16_deepspeed_training_on_cuda(tmp_path):
    from cgpt.train.trainer import train

    data = make_data(tmp_path / "data")
    d = make_cfg(tmp_path, data, steps=20, precision="bf16", zero_stage=1, device="cuda")
    summary = train(parse_run_config(d))
    assert summary["status"] == "completed"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert torch.cuda.max_memory_allocated() > 0
