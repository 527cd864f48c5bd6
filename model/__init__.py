"""cgpt.model: the Cerebras-GPT network, the size table, size/FLOP accounting, HF conversion.

Pure torch: nothing in this package imports deepspeed or torch.distributed. ``GPT`` (the
torch module) is loaded on first use (PEP 562), so the config, size table and errors import
without torch and quick commands (`cgpt plan`, `cgpt --version`) stay quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cgpt.model.config import GPTConfig, MuPConfig
from cgpt.model.errors import CgptError, ConfigError
from cgpt.model.sizes import (
    PUBLISHED,
    canonical_name,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_non_embedding_params,
    num_params,
    published,
)

if TYPE_CHECKING:
    from cgpt.model.gpt import GPT

__all__ = [
    "GPT",
    "GPTConfig",
    "MuPConfig",
    "CgptError",
    "ConfigError",
    "PUBLISHED",
    "canonical_name",
    "published",
    "num_params",
    "num_non_embedding_params",
    "flops_per_token_algorithmic",
    "flops_per_token_mfu",
]


def __getattr__(name: str) -> Any:
    """Load ``GPT`` (and so torch) only when it is asked for."""
    if name == "GPT":
        # deferred: torch is heavy; quick verbs must not load it
        from cgpt.model.gpt import GPT

        globals()["GPT"] = GPT
        return GPT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
