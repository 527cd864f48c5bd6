"""The DeepSpeed config and optimizer generated from a run config."""

from __future__ import annotations

import pytest
import torch

from cgpt.model import GPT
from cgpt.model.errors import CgptError
from cgpt.train.config import parse_run_config
from cgpt.train.loop.engine import build_ds_config, build_optimizer, check_precision
from cgpt.train.plan.batch import split_batch


def _cfg(**runtime):
    return parse_run_config(
        {
            "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64, "n_positions": 16},
            "data": {"path": "unused"},
            "plan": {
                "params": 1,
                "seq_len": 16,
                "tokens": 1,
                "steps": 10,
                "global_batch_seqs": 24,
                "lr": 6e-4,
                "min_lr": 6e-5,
                "warmup_steps": 2,
                "decay_steps": 8,
                "grad_clip": 0.5,
                "adam_eps": 1e-9,
                "weight_decay": 0.1,
            },
            "runtime": runtime,
        }
    )


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "bf16"), (3, "fp16")])
def test_ds_config_from_batch_rule(stage, precision):
    cfg = _cfg(zero_stage=stage, precision=precision, micro_batch=3)
    ds = build_ds_config(cfg, split_batch(24, 2, 3))
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4  # 3 x 4 x 2 = 24
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] == (precision == "bf16")
    assert ds["fp16"]["enabled"] == (precision == "fp16")
    assert "scheduler" not in ds and "optimizer" not in ds  # client optimizer, our LR


def test_fp16_needs_cuda():
    with pytest.raises(CgptError, match="fp16 needs a CUDA GPU"):
        check_precision("fp16", "cpu", 1)
    check_precision("bf16", "cpu", 1)


def test_optimizer_groups_decay_and_mup_scale():
    cfg = _cfg()
    opt = build_optimizer(GPT(cfg.model), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-9
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    model_params = dict(GPT(cfg.model).named_parameters())
    n_matrices = sum(p.dim() >= 2 for p in model_params.values())
    assert len(decayed) == n_matrices  # biases and LayerNorms are not decayed
    d = cfg.to_dict()
    d["model"]["mup"] = {}
    d["model"]["n_embd"] = 512  # width multiplier 2
    d["model"]["n_head"] = 8
    mcfg = parse_run_config(d)
    opt = build_optimizer(GPT(mcfg.model), mcfg, "cpu")
    assert sorted({g["lr_scale"] for g in opt.param_groups}) == [0.5, 1.0]
    assert all(g["lr"] == pytest.approx(6e-4 * g["lr_scale"]) for g in opt.param_groups)
