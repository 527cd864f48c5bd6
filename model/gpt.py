"""The Cerebras-GPT network: GPT-2 architecture exactly as transformers' GPT2LMHeadModel.

pre-LN blocks, learned absolute positions, exact (erf) GELU, biases everywhere except the
tied LM head, LayerNorm eps 1e-5, no dropout (docs/REFERENCE.md, Architecture). Module
names follow HF GPT-2 so conversion is a key map plus Conv1D transposes (cgpt.model.hf).
Pure torch: nothing here imports deepspeed or torch.distributed.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cgpt.model.config import GPTConfig
from cgpt.model.fused_ce import linear_cross_entropy


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        # μP scores QK^T / d_head (docs/REFERENCE.md, Cerebras-GPT-μP);
        # standard is 1/sqrt(d_head) (SDPA default).
        self.scale = 1.0 / self.head_dim if (cfg.mup and cfg.mup.attn_scale_by_d_head) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        # (B, nh, T, hd); SDPA picks flash / memory-efficient kernels on GPU
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd  # set by GPTConfig.__post_init__
        self.c_fc = nn.Linear(cfg.n_embd, inner)
        self.c_proj = nn.Linear(inner, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact erf GELU, HF "gelu"


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = cfg = config
        wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.transformer = nn.ModuleDict(
            dict(
                wte=wte,
                wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = wte.weight  # tied (docs/REFERENCE.md, Architecture)
        self.gradient_checkpointing = False
        # how forward(idx, targets) computes the loss: True = the fused head + cross-entropy
        # (cgpt.model.fused_ce, never builds the logits); False = logits, then F.cross_entropy.
        # Same value and gradients either way; the return type does not depend on it.
        self.fused_loss = True
        if cfg.mup is not None:
            self.embeddings_multiplier = cfg.mup.embeddings_multiplier
            self.output_multiplier = cfg.mup.output_multiplier / cfg.mup_width_mult
        else:
            self.embeddings_multiplier = self.output_multiplier = 1.0
        self.reset_parameters()

    # ---- init -----------------------------------------------------------------------
    def init_stds(self) -> dict[str, float]:
        """Init std per parameter name (weights only; biases are zero, LayerNorm is 1/0)."""
        cfg, stds = self.config, {}
        if cfg.mup is None:
            emb, hidden = cfg.init_std, cfg.init_std
            out = cfg.out_init_std or cfg.init_std / math.sqrt(2 * cfg.n_layer)  # __post_init__
        else:  # docs/REFERENCE.md, Cerebras-GPT-μP: 0.08, 0.08/sqrt(m), 0.08/sqrt(2·m·L)
            base, m = cfg.mup.base_init_std, cfg.mup_width_mult
            emb, hidden, out = base, base / math.sqrt(m), base / math.sqrt(2 * m * cfg.n_layer)
        for name, _ in self.named_parameters():
            if name.endswith("c_proj.weight"):
                stds[name] = out
            elif name.endswith(("c_attn.weight", "c_fc.weight")):
                stds[name] = hidden
            elif name.endswith(("wte.weight", "wpe.weight")):
                stds[name] = emb
        return stds

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated normal at ±2σ for weights, zeros for biases, LayerNorm (1, 0)."""
        stds = self.init_stds()
        for name, p in self.named_parameters():
            if name in stds:
                s = stds[name]
                nn.init.trunc_normal_(p, mean=0.0, std=s, a=-2 * s, b=2 * s)
            elif (
                name.endswith("ln_1.weight")
                or name.endswith("ln_2.weight")
                or name.endswith("ln_f.weight")
            ):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    # ---- forward ----------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The model's one API:

        * ``model(idx)``: idx (B, T) token ids -> logits (B, T, V);
        * ``model(idx, targets)``: the mean next-token cross-entropy, a scalar fp32 tensor
          (targets (B, T), already shifted; -1 is ignored). No logits are returned: with
          ``fused_loss`` they are never built, which is where the memory goes at 50k vocab.
          Call ``model(idx)`` when you need them.
        """
        B, T = idx.shape
        if T > self.config.n_positions:
            raise ValueError(f"sequence length {T} exceeds n_positions {self.config.n_positions}")
        pos = torch.arange(T, device=idx.device)
        # ModuleDict attribute access is typed Tensor | Module: index it (same modules) instead
        tr = self.transformer
        x = tr["wte"](idx) + tr["wpe"](pos)  # (B, T, C)
        if self.embeddings_multiplier != 1.0:
            x = x * self.embeddings_multiplier
        x = tr["drop"](x)
        for block in cast(nn.ModuleList, tr["h"]):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = tr["ln_f"](x)
        if targets is not None and self.fused_loss:
            if self.output_multiplier != 1.0:  # (x·m)Wᵀ = m·(xWᵀ)
                x = x * self.output_multiplier
            return linear_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)  # (B, T, V)
        if self.output_multiplier != 1.0:
            logits = logits * self.output_multiplier
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weight counted once

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Sample continuations (B, T) -> (B, T + max_new_tokens); greedy when temperature 0."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.n_positions :]
            logits = self(ctx)[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
