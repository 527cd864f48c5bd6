"""Model shapes in the family's style and what N counts (pure functions).

``shape_for_params``: (layers, width, heads) with about N parameters, from the depth/width
curve of cgpt.train.plan.rules; ``param_counter``: the count N means (total or
non-embedding); ``continuous_params``: N along that curve at a real-valued width (what the
budget solver bisects on).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, num_non_embedding_params, num_params
from cgpt.train.plan import rules as R

PARAM_COUNTS = ("total", "non-embedding")


def param_counter(param_count: str):
    """The parameter count that N means: num_params or num_non_embedding_params."""
    if param_count == "total":
        return num_params
    if param_count == "non-embedding":
        return num_non_embedding_params
    raise CgptError(f"the parameter count must be total or non-embedding, got {param_count!r}")


def curve_shape(d: float, vocab: int, seq_len: int, n_layer: float | None = None):
    """The family's shape at (real-valued) width d, for the count functions of
    cgpt.model.sizes: depth from the depth/width curve unless given, d_ffn = 4·d."""
    return SimpleNamespace(
        n_embd=d,
        n_layer=R.layers_for_width(d) if n_layer is None else n_layer,
        vocab_size=vocab,
        n_positions=seq_len,
        n_inner=4 * d,
    )


def continuous_params(d: float, vocab: int, seq_len: int, count=num_params) -> float:
    """N (as ``count`` counts it) along the family's curve at width d."""
    return count(curve_shape(d, vocab, seq_len))


def bisect(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for increasing f (geometric bisection)."""
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return math.sqrt(lo * hi)


def shape_for_params(
    params: float,
    vocab_size: int = GPT2_VOCAB,
    seq_len: int = R.SEQ_LEN,
    param_count: str = "total",
) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) in the family's style with about `params` parameters
    (``param_count`` "total" or "non-embedding").

    Width from the interpolated depth/width curve, rounded to the d_head grid; depth the
    integer next to the curve that lands closest to `params`. Reproduces all seven shapes.
    """
    count = param_counter(param_count)
    smallest = continuous_params(64, vocab_size, seq_len, count)
    if params < smallest:
        raise CgptError(
            f"{params:,.0f} parameters is below the smallest model in this family "
            f"(~{smallest:,.0f} at width 64 with vocab {vocab_size}); use "
            f"--layers/--width for tiny models"
        )
    d = bisect(lambda x: continuous_params(x, vocab_size, seq_len, count), params, 64, 1e6)
    best = None
    for grid_d in {
        max(64, math.floor(d / R.width_grid(d)) * R.width_grid(d)),
        math.ceil(d / R.width_grid(d)) * R.width_grid(d),
    }:
        curve = R.layers_for_width(grid_d)
        for layers in {max(1, math.floor(curve)), max(1, math.ceil(curve))}:
            n = count(curve_shape(grid_d, vocab_size, seq_len, layers))
            key = (abs(math.log(n / params)), abs(layers - curve))
            if best is None or key < best[0]:
                best = (key, layers, grid_d)
    assert best is not None  # the loops above always run
    _, layers, width = best
    return layers, width, R.n_head_rule(width)
