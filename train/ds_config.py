"""The DeepSpeed config and optimizer, generated from the run config (never hand-edited).

Batch numbers come from the one batch rule (cgpt.train.batch.split_batch). The optimizer is
a *client* optimizer so its parameter groups carry ``lr_scale`` (μP) and the trainer sets
each group's LR every step from the plan (cgpt.train.schedule); DeepSpeed gets no scheduler.
Weight decay: matrices (attention, MLP, embeddings) decay, biases and LayerNorm do not
(cgpt.train.optim.param_groups; REFERENCE.md: AdamW, wd 0.1, betas (0.9, 0.95)).
"""

from __future__ import annotations

import json
import os

import torch

from cgpt.model.errors import CgptError

from .batch import BatchSplit
from .optim import param_groups
from .runconfig import RunConfig, write_text_atomic

NEVER = 10**12  # steps_per_print: the trainer does its own logging


def check_precision(precision: str, device: str, zero_stage: int) -> None:
    """Refuse combinations DeepSpeed cannot run, with the fix."""
    if precision == "fp16" and device != "cuda":
        raise CgptError("runtime.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")


def build_ds_config(cfg: RunConfig, split: BatchSplit) -> dict:
    """The DeepSpeed JSON for this run (first batch phase; later phases change the
    accumulation through engine.set_train_batch_size)."""
    rt, plan = cfg.runtime, cfg.plan
    ds: dict = {
        "train_batch_size": split.global_batch,
        "train_micro_batch_size_per_gpu": split.micro_batch,
        "gradient_accumulation_steps": split.grad_accum,
        "gradient_clipping": float(plan.grad_clip),  # REFERENCE.md: global norm 1.0
        "zero_optimization": {"stage": rt.zero_stage},
        "bf16": {"enabled": rt.precision == "bf16"},
        "fp16": {"enabled": rt.precision == "fp16"},
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
        # the client optimizer is torch AdamW on CPU: allow it under ZeRO
        "zero_allow_untested_optimizer": True,
    }
    if rt.zero_stage >= 1:
        ds["zero_optimization"].update(overlap_comm=False, contiguous_gradients=True)
    if rt.precision == "fp16":
        ds["fp16"].update(loss_scale=0, initial_scale_power=16)  # dynamic loss scaling
    return ds


def save_ds_config(ds: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(ds, indent=2) + "\n")


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: str):
    """AdamW over cgpt's parameter groups: DeepSpeed's FusedAdam on CUDA, torch's fused AdamW
    on CPU."""
    plan = cfg.plan
    groups = param_groups(model, plan.weight_decay)
    for g in groups:
        g["lr"] = plan.lr * g["lr_scale"]  # overwritten every step by the trainer
    kw = dict(lr=plan.lr, betas=tuple(plan.adam_betas), eps=plan.adam_eps)
    if device == "cuda":
        try:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, adam_w_mode=True, **kw)
        except Exception:  # no CUDA toolchain to build the op: torch's fused AdamW is as fast
            return torch.optim.AdamW(groups, fused=True, **kw)
    # torch's fused AdamW has a CPU kernel (torch >= 2.4): measured 7x faster than the
    # default foreach path on 111M parameters (27 vs 175 ms per step, 2 cores)
    return torch.optim.AdamW(groups, fused=True, **kw)
