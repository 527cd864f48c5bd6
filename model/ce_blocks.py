"""How many rows of logits the fused loss (cgpt.model.fused_ce) makes at a time: one
definition for the loss and for the planner's memory model, importable without torch."""

from __future__ import annotations

# rows of logits per block: big enough that each block's matmul is efficient (the whole
# head weight is read once per block), small enough to stay in cache: 2^22 logits = 8 MiB
# of bf16 (measured on 2 CPU cores, bf16, V = 50,257: 1.3-1.4x faster than the usual
# loss, forward + backward; 2^21 and 2^23 were slower)
BLOCK_ELEMENTS = 2**22
# on a GPU the blocks are for memory, not cache: few large matmuls and kernel launches;
# 2^27 logits is a 512 MiB fp32 block (the usual loss holds all N x V in fp32: 6 GiB at
# 111M, micro-batch 15). Not yet timed on a GPU.
BLOCK_ELEMENTS_GPU = 2**27


def block_rows(vocab: int, device_type: str) -> int:
    """Rows of logits per block on a 'cpu' or GPU device (also the memory model's figure)."""
    per_block = BLOCK_ELEMENTS if device_type == "cpu" else BLOCK_ELEMENTS_GPU
    return max(16, per_block // vocab)
