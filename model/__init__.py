"""cgpt.model: the Cerebras-GPT network, the size table, size/FLOP accounting, HF conversion.

Pure torch: nothing in this package imports deepspeed or torch.distributed.
"""

from cgpt.model.config import GPTConfig, MuPConfig
from cgpt.model.errors import CgptError, ConfigError
from cgpt.model.gpt import GPT
from cgpt.model.sizes import (
    PUBLISHED,
    canonical_name,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_non_embedding_params,
    num_params,
    published,
)

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
