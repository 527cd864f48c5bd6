"""The one batch rule: micro_batch × grad_accum × data_parallel = global_batch (sequences).

Every other module (planner, DeepSpeed config, launcher) calls :func:`split_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpt.model.errors import CgptError


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int
    micro_batch: int
    grad_accum: int
    data_parallel: int


def feasible_micro_batches(global_batch: int, data_parallel: int) -> list[int]:
    """All micro-batches b with b × accum × dp == global_batch for an integer accum."""
    if global_batch % data_parallel:
        return []
    per_rank = global_batch // data_parallel
    return [b for b in range(1, per_rank + 1) if per_rank % b == 0]


def nearest_feasible(
    global_batch: int, data_parallel: int, span: int = 3
) -> tuple[list[int], list[int]]:
    """Global batches near `global_batch` that `data_parallel` divides, and rank counts
    near `data_parallel` that divide `global_batch` (for error messages)."""
    lo = (global_batch // data_parallel) * data_parallel
    batches = sorted({b for b in (lo, lo + data_parallel, lo - data_parallel) if b > 0})
    ranks = [r for r in range(1, global_batch + 1) if global_batch % r == 0]
    ranks = sorted(ranks, key=lambda r: (abs(r - data_parallel), r))[:span]
    return batches, sorted(ranks)


def split_batch(global_batch: int, data_parallel: int, micro_batch: int) -> BatchSplit:
    """Return the split, or raise CgptError naming the nearest feasible choices."""
    for name, v in (
        ("global batch", global_batch),
        ("data-parallel ranks", data_parallel),
        ("micro-batch", micro_batch),
    ):
        if not isinstance(v, int) or v <= 0:
            raise CgptError(f"{name} must be a positive integer, got {v!r}")
    if global_batch % data_parallel:
        batches, ranks = nearest_feasible(global_batch, data_parallel)
        raise CgptError(
            f"a global batch of {global_batch} sequences cannot be split over {data_parallel} "
            f"data-parallel ranks; use a global batch of {' or '.join(map(str, batches))}, "
            f"or {' / '.join(map(str, ranks))} ranks"
        )
    per_rank = global_batch // data_parallel
    if per_rank % micro_batch:
        options = feasible_micro_batches(global_batch, data_parallel)
        near = sorted(options, key=lambda b: (abs(b - micro_batch), b))[:4]
        raise CgptError(
            f"micro-batch {micro_batch} does not divide the {per_rank} sequences each of "
            f"{data_parallel} rank(s) gets per step (global batch {global_batch}); "
            f"feasible micro-batches near it: {', '.join(map(str, sorted(near)))}"
        )
    return BatchSplit(global_batch, micro_batch, per_rank // micro_batch, data_parallel)
