"""The published Cerebras-GPT sizes and exact size/FLOP accounting (pure functions).

All constants come from docs/REFERENCE.md (sections Model sizes, Training recipe, Results, FLOP
conventions), which cites the Cerebras-GPT paper (arXiv 2304.03208) and the Hub
``config.json`` files.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpt.model.errors import CgptError

GPT2_VOCAB = 50257  # GPT-2 BPE, not padded (docs/REFERENCE.md, Architecture)
CONTEXT = 2048  # n_positions for every size (docs/REFERENCE.md, Architecture)
# A model's vocab is its data's tokenizer vocab, or that padded up to a multiple of 64 (as
# nanoGPT pads GPT-2's 50257 to 50304 for faster matmuls); anything else is refused.
VOCAB_PAD_MULTIPLE = 64


def padded_vocab(data_vocab: int) -> int:
    """``data_vocab`` rounded up to a multiple of VOCAB_PAD_MULTIPLE."""
    return -(-int(data_vocab) // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def vocab_fits(model_vocab: int, data_vocab: int) -> bool:
    """True when a model of ``model_vocab`` may train on data of ``data_vocab``: equal, or
    the data's vocab padded up (:func:`padded_vocab`)."""
    return int(model_vocab) in (int(data_vocab), padded_vocab(data_vocab))


@dataclass(frozen=True)
class PublishedSize:
    name: str
    params: int  # exact GPT2LMHeadModel count, tied embeddings
    n_layer: int
    n_embd: int
    n_head: int
    n_inner: int
    out_init_std: float  # attn.c_proj / mlp.c_proj init std ("out std")


# docs/REFERENCE.md, Model sizes; out_init_std is the "out std" column of
# docs/REFERENCE.md, Training recipe.
PUBLISHED: dict[str, PublishedSize] = {
    s.name: s
    for s in [
        PublishedSize("111M", 111_050_496, 10, 768, 12, 3072, 0.02 / (2 * 10) ** 0.5),
        PublishedSize("256M", 255_977_024, 14, 1088, 17, 4352, 0.02 / (2 * 14) ** 0.5),
        PublishedSize("590M", 590_310_912, 18, 1536, 12, 6144, 0.02 / (2 * 18) ** 0.5),
        PublishedSize("1.3B", 1_315_723_264, 24, 2048, 16, 8192, 0.0025),
        PublishedSize("2.7B", 2_651_553_280, 32, 2560, 32, 10240, 0.0025),
        PublishedSize("6.7B", 6_658_404_352, 32, 4096, 32, 16384, 0.0025),
        PublishedSize("13B", 12_853_386_240, 40, 5120, 40, 20480, 0.0025),
    ]
}


def canonical_name(name: str) -> str:
    """'111m', 'cerebras-gpt-111m', 'cerebras/Cerebras-GPT-1.3B' -> '111M' / '1.3B'."""
    key = name.strip().split("/")[-1].lower()
    for prefix in ("cerebras-gpt-", "cerebras_gpt_", "cgpt-"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    for known in PUBLISHED:
        if key == known.lower():
            return known
    raise CgptError(f"unknown model size {name!r}; valid names: {', '.join(PUBLISHED)}")


def published(name: str) -> PublishedSize:
    return PUBLISHED[canonical_name(name)]


def _shape(cfg):
    d, L, V, P = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_positions
    f = cfg.n_inner or 4 * d
    return d, L, V, P, f


def num_params(cfg, *, tied: bool = True) -> int:
    """Exact parameter count of GPT(cfg) == GPT2LMHeadModel (tied head, no head bias)."""
    d, L, V, P, f = _shape(cfg)
    per_layer = (
        2 * d  # ln_1
        + 3 * d * d
        + 3 * d  # attn.c_attn
        + d * d
        + d  # attn.c_proj
        + 2 * d  # ln_2
        + d * f
        + f  # mlp.c_fc
        + f * d
        + d  # mlp.c_proj
    )
    total = V * d + P * d + L * per_layer + 2 * d  # wte, wpe, blocks, ln_f
    return total if tied else total + V * d


def num_non_embedding_params(cfg) -> int:
    """Parameters outside the token and position embeddings (Kaplan et al. convention)."""
    d, _, V, P, _ = _shape(cfg)
    return num_params(cfg) - V * d - P * d


def flops_per_token_algorithmic(cfg, seq_len: int | None = None) -> int:
    """Training FLOPs per token in the Cerebras-GPT paper's "algorithmic" convention.

    6·(non-embedding params) + 10·d_model·vocab + 24·layers·seq_len·d_model
    (docs/REFERENCE.md, FLOP conventions): reproduces the paper's train-FLOPs column.
    """
    d, L, V, P, _ = _shape(cfg)
    T = seq_len or P
    return 6 * num_non_embedding_params(cfg) + 10 * d * V + 24 * L * T * d


def flops_per_token_mfu(cfg, seq_len: int | None = None) -> int:
    """Training FLOPs per token for MFU (PaLM / nanoGPT): 6·N + 12·layers·seq_len·d_model.

    N counts every parameter that takes part in a matmul: all of them except the position
    embeddings (the tied token embedding is the LM head's matmul, so it counts).
    """
    d, L, _, P, _ = _shape(cfg)
    T = seq_len or P
    n = num_params(cfg) - P * d
    return 6 * n + 12 * L * T * d
