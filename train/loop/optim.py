"""Optimizer parameter groups: weight decay split and μP per-layer learning rates.

Weight decay (0.1, docs/REFERENCE.md, Training recipe) applies to every matrix (attention, MLP,
embeddings); biases and LayerNorm parameters get none, as in GPT-NeoX / nanoGPT practice.
μP (docs/REFERENCE.md, Cerebras-GPT-μP): hidden matrices (c_attn, c_proj, c_fc) learn at
LR / m, embeddings, LayerNorms and biases at the base LR. AdamW's decoupled decay is
lr·wd·p, so the decay of a group follows its LR scale consistently.
Each group carries ``lr_scale``: the trainer sets ``group['lr'] = lr_at(step) * lr_scale``.
"""

from __future__ import annotations

import torch.nn as nn

HIDDEN_MATRICES = ("c_attn.weight", "c_fc.weight", "c_proj.weight")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    cfg = getattr(model, "config", None)
    mup = getattr(cfg, "mup", None)
    m = cfg.mup_width_mult if cfg is not None and mup is not None else 1.0
    buckets: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = weight_decay if p.dim() >= 2 else 0.0
        scale = 1.0 / m if (mup is not None and name.endswith(HIDDEN_MATRICES)) else 1.0
        buckets.setdefault((wd, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": wd, "lr_scale": scale}
        for (wd, scale), ps in sorted(buckets.items())
    ]
