"""Memory per GPU for a training step, and the micro-batch that fits (pure arithmetic).

Model states per ZeRO stage (Rajbhandari et al. 2020, arXiv 1910.02054), activations counted
for this model (after Korthikanti et al. 2022, arXiv 2205.05198), the LM head's logits, and
2 GiB + 10% overhead; tests/test_memory.py checks the terms against real tensors. Bytes per
term: docs/DESIGN-NOTES.md, plan/memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cgpt.model.ce_blocks import block_rows
from cgpt.model.errors import CgptError
from cgpt.model.sizes import num_params
from cgpt.train.checks import FieldError
from cgpt.train.plan.batch import BatchSplit, feasible_micro_batches, split_batch
from cgpt.train.plan.devices import Device, GiB

FIXED_OVERHEAD = 2 * GiB
FRAGMENTATION = 0.10
MEMORY_FRACTION = 0.9  # plan to use at most 90% of device memory
ACT_ELEMS_PER_LAYER = 17  # ×h elements per token, see the module docstring

_STATE_BYTES = {  # precision -> (weight, grad, optimizer) bytes per parameter
    "bf16": (2, 2, 12),
    "fp16": (2, 2, 12),
    "fp32": (4, 4, 8),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by component (see the module docstring for each term)."""

    weights: int
    grads: int
    optimizer: int
    activations: int  # kept for backward + backward working set, transformer blocks
    logits: int  # LM head: logits, fp32 log-softmax and its gradient
    overhead: int
    micro_batch: int
    zero_stage: int
    data_parallel: int
    activation_checkpointing: bool

    @property
    def model_states(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.logits + self.overhead

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def state_bytes(
    n_params: int, zero_stage: int, data_parallel: int, precision: str = "bf16"
) -> tuple[int, int, int]:
    """(weights, grads, optimizer) bytes per rank under a ZeRO stage."""
    if precision not in _STATE_BYTES:
        raise CgptError(f"unknown precision {precision!r}; use one of {', '.join(_STATE_BYTES)}")
    if zero_stage not in (0, 1, 2, 3):
        raise CgptError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    w, g, o = (b * n_params for b in _STATE_BYTES[precision])
    dp = data_parallel
    return (
        w // dp if zero_stage >= 3 else w,
        g // dp if zero_stage >= 2 else g,
        o // dp if zero_stage >= 1 else o,
    )


def layer_activation_bytes(
    cfg, seq_len: int, micro_batch: int, act_bytes: int = 2, attention: str = "flash"
) -> int:
    """Bytes autograd keeps for one transformer block (no checkpointing)."""
    s, b, h, a = seq_len, micro_batch, cfg.n_embd, cfg.n_head
    f_ratio = (cfg.n_inner or 4 * h) / h  # GELU input/output are n_inner wide
    elems = (ACT_ELEMS_PER_LAYER - 8 + 2 * f_ratio) * h
    total = s * b * (elems * act_bytes + (2 * 2 + a) * 4)  # 2 LayerNorms' mean/rstd, lse: fp32
    if attention == "math":
        total += 2 * a * s * s * b * act_bytes  # scores and softmax probabilities
    elif attention != "flash":
        raise CgptError(f"attention must be 'flash' or 'math', got {attention!r}")
    return int(total)


def head_bytes(cfg, seq_len: int, micro_batch: int, act_bytes: int = 2) -> int:
    """What autograd keeps for ln_f and lm_head: their inputs and LayerNorm statistics."""
    s, b, h = seq_len, micro_batch, cfg.n_embd
    return int(s * b * (2 * h * act_bytes + 2 * 4))


def estimate_memory(
    cfg,
    seq_len: int,
    micro_batch: int,
    zero_stage: int = 1,
    data_parallel: int = 1,
    activation_checkpointing: bool = False,
    precision: str = "bf16",
    attention: str = "flash",
    overhead: bool = True,
) -> MemoryEstimate:
    """Peak bytes per GPU for one training step of GPT(cfg).

    The peak is the larger of two moments: the loss (every kept activation, the (N, V)
    logits gradient the fused loss keeps in the activation dtype, and one block of logits
    with its fp32 log-probabilities, cgpt.model.fused_ce) and backward through a block (the
    logits gradient freed; one block recomputed under checkpointing plus its gradients in
    flight).
    """
    act_bytes = _STATE_BYTES.get(precision, (2,))[0]
    w, g, o = state_bytes(num_params(cfg), zero_stage, data_parallel, precision)
    s, b, h = seq_len, micro_batch, cfg.n_embd
    layer = layer_activation_bytes(cfg, s, b, act_bytes, attention)
    if activation_checkpointing:  # only block inputs kept
        blocks = cfg.n_layer * s * b * h * act_bytes
    else:
        blocks = cfg.n_layer * layer
    kept = blocks + head_bytes(cfg, s, b, act_bytes)
    svb = s * b * cfg.vocab_size
    block = min(svb, block_rows(cfg.vocab_size, "cuda") * cfg.vocab_size)
    at_head = svb * act_bytes + block * (act_bytes + 4)  # gradient; block logits, fp32 logp
    grads_in_flight = s * b * (2 * (cfg.n_inner or 4 * h) + 2 * h) * act_bytes
    in_block = grads_in_flight + (layer if activation_checkpointing else 0)
    if at_head >= in_block:
        acts, logits = kept, at_head
    else:
        acts, logits = kept + in_block, 0
    rest = w + g + o + acts + logits
    extra = int(FIXED_OVERHEAD + FRAGMENTATION * rest) if overhead else 0
    return MemoryEstimate(
        w,
        g,
        o,
        int(acts),
        int(logits),
        extra,
        micro_batch,
        zero_stage,
        data_parallel,
        activation_checkpointing,
    )


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:,.1f} GiB"


@dataclass(frozen=True)
class Fitted:
    splits: tuple[BatchSplit, ...]  # one per batch phase, same micro-batch
    memory: MemoryEstimate

    @property
    def micro_batch(self) -> int:
        return self.splits[0].micro_batch


def fit_micro_batch(
    cfg,
    seq_len: int,
    global_batches: list[int],
    gpus: int,
    device: Device,
    zero_stage: int = 1,
    activation_checkpointing: bool | None = None,
    micro_batch: int | None = None,
    precision: str = "bf16",
    memory_fraction: float = MEMORY_FRACTION,
    per_node: int | None = None,
) -> Fitted:
    """The largest micro-batch that divides every phase's per-rank batch and fits.

    Without activation checkpointing when any micro-batch fits that way (it costs a
    third more compute), else with it. Raises CgptError naming the nearest feasible batch
    split, or the flags of a ZeRO stage / GPU count that would fit (``per_node``: GPUs per
    node, when the count is --nodes × --gpus-per-node).
    """
    for gb in global_batches:
        split_batch(gb, gpus, micro_batch or 1)  # raises with the nearest feasible choices
    options = sorted(
        set.intersection(*(set(feasible_micro_batches(gb, gpus)) for gb in global_batches))
    )
    if micro_batch is not None:
        options = [micro_batch]
    budget = memory_fraction * device.memory_bytes
    modes = [activation_checkpointing] if activation_checkpointing is not None else [False, True]
    for ac in modes:
        for mb in reversed(options):
            est = estimate_memory(cfg, seq_len, mb, zero_stage, gpus, ac, precision)
            if est.total <= budget:
                splits = tuple(split_batch(gb, gpus, mb) for gb in global_batches)
                return Fitted(splits, est)
    raise _no_fit(
        cfg,
        seq_len,
        global_batches,
        gpus,
        device,
        zero_stage,
        options[0],
        modes[-1],
        precision,
        budget,
        per_node,
    )


def _fits(cfg, seq_len, gpus, stage, mb, ac, precision, budget) -> bool:
    return estimate_memory(cfg, seq_len, mb, stage, gpus, ac, precision).total <= budget


def _no_fit(
    cfg, seq_len, global_batches, gpus, device, zero_stage, mb, ac, precision, budget, per_node
) -> FieldError:
    """The refusal: what was tried, and the ZeRO stage, GPU count (per_node: node count) or
    activation checkpointing that would fit, as the request's fields."""
    need = estimate_memory(cfg, seq_len, mb, zero_stage, gpus, ac, precision).total
    msg = (
        f"the model ({num_params(cfg):,} params) does not fit in {device.name} memory "
        f"({fmt_bytes(budget)} usable of {fmt_bytes(device.memory_bytes)}) with {gpus} GPU(s) "
        f"at ZeRO stage {zero_stage}, micro-batch {mb}"
        f"{' with activation checkpointing' if ac else ''}: it needs {fmt_bytes(need)} per GPU"
    )
    hints = []
    for stage in range(zero_stage + 1, 4):
        if _fits(cfg, seq_len, gpus, stage, mb, ac, precision, budget):
            hints.append(f"{{f.zero_stage}} {stage} would fit")
            break
    gcd_ranks = [
        r
        for r in range(gpus + 1, max(global_batches) + 1)
        if all(gb % (r * mb) == 0 for gb in global_batches) and r % (per_node or 1) == 0
    ]
    for stage in sorted({zero_stage, 3}):
        more = next(
            (r for r in gcd_ranks if _fits(cfg, seq_len, r, stage, mb, ac, precision, budget)),
            None,
        )
        if more:
            count = f"{{f.nodes}} {more // per_node}" if per_node else f"{{f.gpus}} {more}"
            hints.append(f"{count} {{f.zero_stage}} {stage} ({more} GPUs) would fit")
            break
    if not ac and _fits(cfg, seq_len, gpus, zero_stage, mb, True, precision, budget):
        hints.append("{f.activation_checkpointing} would fit")
    advice = (
        "; ".join(hints) if hints else "no ZeRO stage or GPU count that divides the batch fits it"
    )
    return FieldError("{tried}; " + advice, tried=msg)
