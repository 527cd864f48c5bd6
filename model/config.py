"""Model configuration: GPTConfig (HF GPT-2 field names) and the optional μP section."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from cgpt.model.errors import ConfigError
from cgpt.model.sizes import CONTEXT, GPT2_VOCAB, published


@dataclass
class MuPConfig:
    """Cerebras-GPT-μP multipliers (docs/REFERENCE.md, Cerebras-GPT-μP).

    Width multiplier m = n_embd / base_width. The model multiplies the embedding output by
    ``embeddings_multiplier``, the logits by ``output_multiplier / m``, and scales attention
    scores by 1/d_head instead of 1/sqrt(d_head) when ``attn_scale_by_d_head``.
    """

    base_width: int = 256  # the 40M proxy's d_model
    embeddings_multiplier: float = 10.0
    output_multiplier: float = 1.0
    attn_scale_by_d_head: bool = True
    base_init_std: float = 0.08

    # read by pydantic when a run config embeds this dataclass: unknown keys are errors
    __pydantic_config__ = {"extra": "forbid"}

    def validate(self, n_embd: int) -> None:
        if self.base_width <= 0:
            raise ConfigError(f"mup.base_width must be positive, got {self.base_width}")
        if self.base_width > n_embd:
            raise ConfigError(
                f"mup.base_width ({self.base_width}) is larger than the model width n_embd "
                f"({n_embd}); μP scales up from a narrower proxy: set mup.base_width <= {n_embd}"
            )
        for name in ("embeddings_multiplier", "output_multiplier", "base_init_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"mup.{name} must be a positive number, got {v!r}")


@dataclass
class GPTConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_inner: int | None = None  # defaults to 4·n_embd
    n_positions: int = CONTEXT
    vocab_size: int = GPT2_VOCAB
    layer_norm_epsilon: float = 1e-5
    init_std: float = 0.02  # truncated normal at ±2σ (docs/REFERENCE.md, Architecture)
    out_init_std: float | None = None  # c_proj init; default 0.02/sqrt(2·n_layer)
    dropout: float = 0.0  # Cerebras-GPT uses none
    mup: MuPConfig | None = None

    __pydantic_config__ = {"extra": "forbid"}  # as MuPConfig's

    def __post_init__(self):
        if isinstance(self.mup, dict):
            self.mup = MuPConfig(**self.mup)
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        if not isinstance(self.n_inner, int) or self.n_inner <= 0:
            raise ConfigError(f"n_inner must be a positive integer, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick n_head from the divisors of n_embd, e.g. {self.n_embd // 64 or 1}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be positive, got {self.init_std}")
        if self.out_init_std is None:
            self.out_init_std = self.init_std / math.sqrt(2 * self.n_layer)
        if self.out_init_std <= 0:
            raise ConfigError(f"out_init_std must be positive, got {self.out_init_std}")
        if self.mup is not None:
            self.mup.validate(self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mup_width_mult(self) -> float:
        """μP width multiplier m = n_embd / base_width (1.0 without μP)."""
        return self.n_embd / self.mup.base_width if self.mup else 1.0

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """A published size: '111M' ... '13B', also 'cerebras-gpt-111m' style names."""
        s = published(name)
        kw: dict[str, object] = dict(
            n_layer=s.n_layer,
            n_embd=s.n_embd,
            n_head=s.n_head,
            n_inner=s.n_inner,
            out_init_std=s.out_init_std,
        )
        kw.update(overrides)
        return cls(**kw)  # type: ignore[arg-type]  # values checked in __post_init__

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.mup is None:
            d.pop("mup")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


__all__ = ["GPTConfig", "MuPConfig"]
