"""The DeepSpeed config and optimizer, generated from the run config (never hand-edited).

Batch numbers come from the one batch rule (cgpt.train.plan.batch.split_batch). The optimizer is
a *client* optimizer so its parameter groups carry ``lr_scale`` (μP) and the trainer sets
each group's LR every step from the plan (cgpt.train.plan.schedule); DeepSpeed gets no scheduler.
Weight decay: matrices (attention, MLP, embeddings) decay, biases and LayerNorm do not
(cgpt.train.loop.optim.param_groups; docs/REFERENCE.md, Training recipe: AdamW, wd 0.1,
betas (0.9, 0.95)).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import torch

from cgpt.model.errors import CgptError
from cgpt.train.config import RunConfig, write_text_atomic
from cgpt.train.distributed import import_deepspeed
from cgpt.train.loop.optim import param_groups
from cgpt.train.plan.batch import BatchSplit

NEVER = 10**12  # steps_per_print: the trainer does its own logging


def check_precision(precision: str, device: str, zero_stage: int) -> None:
    """Refuse combinations DeepSpeed cannot run, with the fix."""
    if precision == "fp16" and device != "cuda":
        raise CgptError("runtime.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")


def build_ds_config(cfg: RunConfig, split: BatchSplit) -> dict:
    """The DeepSpeed JSON for this run (first batch phase; later phases change the
    accumulation through engine.set_train_batch_size)."""
    return engine_config(split, cfg.plan.grad_clip, cfg.runtime.zero_stage, cfg.runtime.precision)


def engine_config(split: BatchSplit, grad_clip: float, zero_stage: int, precision: str) -> dict:
    """The DeepSpeed JSON for one batch split, ZeRO stage and precision (also used by
    ``cgpt bench``, so the benchmark times the trainer's engine)."""
    ds: dict = {
        "train_batch_size": split.global_batch,
        "train_micro_batch_size_per_gpu": split.micro_batch,
        "gradient_accumulation_steps": split.grad_accum,
        "gradient_clipping": float(grad_clip),  # docs/REFERENCE.md, Training recipe: 1.0
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
        # the client optimizer is torch AdamW on CPU: allow it under ZeRO
        "zero_allow_untested_optimizer": True,
    }
    if zero_stage >= 1:
        ds["zero_optimization"].update(overlap_comm=False, contiguous_gradients=True)
    if precision == "bf16" and zero_stage == 1:
        # bf16 weights, fp32 gradient accumulation and fp32 master weights: DeepSpeed's
        # BF16_Optimizer. Without this DeepSpeed accumulates micro-batch gradients in bf16;
        # it is also the fastest bf16 path measured on CPU (ZeRO-1 630 vs 900 ms per step,
        # 2-layer 111M, seq 256 x 2). Stage 0 cannot take it (DeepSpeed refuses the mix).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if precision == "fp16":
        ds["fp16"].update(loss_scale=0, initial_scale_power=16)  # dynamic loss scaling
    return ds


def initialize_engine(model: torch.nn.Module, optimizer, ds: dict, world_size: int):
    """deepspeed.initialize, with the memory reports DeepSpeed prints unconditionally while
    it builds a bf16 optimizer kept off the console (shown only if building fails)."""

    deepspeed = import_deepspeed()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    except BaseException:
        sys.stderr.write(out.getvalue())
        raise
    skip_single_process_allreduce(engine, world_size)
    return engine


def skip_single_process_allreduce(engine, world_size: int) -> None:
    """With one process there is nothing to all-reduce, but DeepSpeed still flattens every
    gradient into a bucket, "reduces" it and copies it back (on CPU: 0.95x -> 1.17x of the
    transformers step, 2-layer 111M bf16). Only the engine's plain fallback path is
    switched off: ZeRO optimizers other than BF16_Optimizer move gradients into their own
    partitions there and keep it."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if world_size == 1 and (
        engine.zero_optimization_stage() == 0 or isinstance(engine.optimizer, BF16_Optimizer)
    ):
        engine.enable_backward_allreduce = False


def save_ds_config(ds: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(ds, indent=2) + "\n")


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: str):
    """AdamW over cgpt's parameter groups with the plan's betas, eps and weight decay."""
    plan = cfg.plan
    return make_adamw(model, plan.lr, plan.adam_betas, plan.adam_eps, plan.weight_decay, device)


def make_adamw(
    model: torch.nn.Module,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    device: str,
):
    """DeepSpeed's FusedAdam on CUDA, torch's fused AdamW on CPU (cgpt.train.loop.optim groups)."""
    groups = param_groups(model, weight_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]  # overwritten every step by the trainer
    if device == "cuda":
        try:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
        except Exception:  # no CUDA toolchain to build the op: torch's fused AdamW is as fast
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    # torch's fused AdamW has a CPU kernel (torch >= 2.4): measured 7x faster than the
    # default foreach path on 111M parameters (27 vs 175 ms per step, 2 cores)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
