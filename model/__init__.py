"""cgpt.model: the Cerebras-GPT network, the size table, size/FLOP accounting, HF conversion.

Pure torch: nothing in this package imports deepspeed or torch.distributed.
"""

from .config import GPTConfig, MuPConfig
from .errors import CgptError, ConfigError
from .gpt import GPT
from .sizes import (
    PUBLISHED,
    canonical_name,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_non_embedding_params,
    num_params,
    published,
)

__all__ = [
    "GPT", "GPTConfig", "MuPConfig", "CgptError", "ConfigError", "PUBLISHED", "canonical_name",
    "published", "num_params", "num_non_embedding_params", "flops_per_token_algorithmic",
    "flops_per_token_mfu",
]
