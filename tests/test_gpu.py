"""GPU paths: bf16 training through DeepSpeed on CUDA, and MFU from the device table.

Skipped (by conftest) where CUDA is absent, with that reason.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_byte_data, make_cfg

from cgpt.train.bench.train_step import bench
from cgpt.train.config import parse_run_config
from cgpt.train.metrics import read_metrics


@pytest.mark.gpu
def test_bench_reports_mfu_on_cuda():
    out = bench(
        "111M",
        steps=3,
        warmup=1,
        seq_len=512,
        micro_batch=4,
        n_layer=2,
        device="cuda",
        compare_hf=True,
    )
    ours = out["results"][0]
    assert out["precision"] == "bf16" and out["device"] != "cpu"
    assert ours["tokens_per_s"] > 0 and ours["peak_memory_bytes"] > 0
    if out["peak_flops"]:  # a GPU in the device table
        assert 0 < ours["mfu"] < 1
    assert math.isfinite(out["final_loss"]["cgpt"])


@pytest.mark.gpu
def test_bf16_deepspeed_training_on_cuda(tmp_path):
    from cgpt.train.loop.trainer import train

    data = make_byte_data(tmp_path / "data")
    d = make_cfg(tmp_path, data, steps=20, precision="bf16", zero_stage=1, device="cuda")
    summary = train(parse_run_config(d))
    assert summary["status"] == "completed"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.gpu
def test_fused_loss_on_cuda_matches_plain_loss():
    """The GPU block size (cgpt.model.ce_blocks.BLOCK_ELEMENTS_GPU): several blocks at bf16."""
    import torch.nn.functional as F

    from cgpt.model import fused_ce

    torch.manual_seed(0)
    n, V, d = 8192, 50257, 256  # 3 blocks of 2670 rows
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(V, d, device="cuda") * 0.05).bfloat16().requires_grad_()
    y = torch.randint(0, V, (n,), device="cuda")
    fused = fused_ce.linear_cross_entropy(x, w, y)
    fused.backward()
    gx, gw = x.grad.float(), w.grad.float()
    x.grad = w.grad = None
    plain = F.cross_entropy((x.float() @ w.float().t()), y)
    plain.backward()
    assert abs(fused.item() - plain.item()) < 1e-2
    assert (gx - x.grad.float()).abs().max() < 2e-2 * x.grad.float().abs().max()
    assert (gw - w.grad.float()).abs().max() < 2e-2 * w.grad.float().abs().max()
