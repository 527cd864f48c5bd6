"""Fold the μP multipliers (embedding E, attention 1/d_head, output α/m) into plain GPT-2
weights, exactly, so transformers' GPT2LMHeadModel runs a Cerebras-GPT-μP model; the head is
untied unless E == α/m. Pure torch, no transformers import: the HF writer (cgpt.model.hf)
consumes the result. The algebra: docs/DESIGN-NOTES.md, model/mup_export.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cgpt.model.config import GPTConfig
from cgpt.model.gpt import GPT

FOLD_NOTE = (
    "μP multipliers folded into the weights by cgpt: embeddings_multiplier into "
    "wte and wpe, the 1/d_head attention scale into the query rows of c_attn, "
    "output_multiplier/width_mult into a separate (untied) lm_head"
)


def fold_mup(model: GPT) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict (our naming, nn.Linear (out, in) layout) of a plain GPT-2 equal to `model`.

    Returns ``(state_dict, hf_config_overrides)``. For a model without μP the state dict is
    the model's own (tied head omitted) and the overrides are empty. With μP,
    ``lm_head.weight`` is present and separate whenever the input and output scales differ,
    and the overrides carry ``tie_word_embeddings: False`` plus a ``cgpt_mup_folded``
    record of what was folded.
    """
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.mup is None:
        sd.pop("lm_head.weight", None)  # tied to wte
        return sd, {}
    mup, m = cfg.mup, cfg.mup_width_mult
    emb_mult = float(model.embeddings_multiplier)
    out_mult = float(model.output_multiplier)  # already α/m
    wte = sd["transformer.wte.weight"]
    head = wte * out_mult  # from the unscaled wte: logits = (α/m)·h·wte^T
    sd["transformer.wte.weight"] = wte * emb_mult
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"] * emb_mult
    if mup.attn_scale_by_d_head:
        _fold_query_scale(sd, cfg.n_layer, cfg.n_embd, 1.0 / math.sqrt(cfg.head_dim))
    tied = math.isclose(emb_mult, out_mult, rel_tol=0.0, abs_tol=0.0)
    if tied:
        sd.pop("lm_head.weight", None)
    else:
        sd["lm_head.weight"] = head
    overrides = {
        "tie_word_embeddings": tied,
        "cgpt_mup_folded": {
            "note": FOLD_NOTE,
            "base_width": mup.base_width,
            "width_mult": m,
            "embeddings_multiplier": mup.embeddings_multiplier,
            "output_multiplier": mup.output_multiplier,
            "logits_scale": out_mult,
            "attn_scale_by_d_head": mup.attn_scale_by_d_head,
            "base_init_std": mup.base_init_std,
            "untied_lm_head": not tied,
        },
    }
    return sd, overrides


def _fold_query_scale(sd: dict, n_layer: int, n_embd: int, scale: float) -> None:
    """Scale the query third (rows [0, C) of the (3C, C) c_attn weight, and its bias)."""
    for i in range(n_layer):
        for suffix in ("weight", "bias"):
            key = f"transformer.h.{i}.attn.c_attn.{suffix}"
            t = sd[key].clone()
            t[:n_embd] *= scale
            sd[key] = t


def plain_model_from_folded(model_or_config, state_dict: dict[str, torch.Tensor]) -> GPT:
    """A GPT without μP holding folded weights (untied head when the state dict has one).

    Used to verify a fold without transformers: its logits must equal the μP model's.
    """
    cfg = getattr(model_or_config, "config", model_or_config)
    plain_cfg = GPTConfig.from_dict({**cfg.to_dict(), "mup": None})
    plain = GPT(plain_cfg)
    if "lm_head.weight" in state_dict:
        plain.lm_head.weight = nn.Parameter(torch.empty_like(state_dict["lm_head.weight"]))
    missing, unexpected = plain.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied head: comes with wte
    if missing or unexpected:
        raise ValueError(f"folded state dict mismatch: missing {missing}, unexpected {unexpected}")
    return plain


__all__ = ["fold_mup", "plain_model_from_folded", "FOLD_NOTE"]
