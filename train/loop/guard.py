"""Divergence guards: a step with non-finite gradients is never applied, and weights that
are not finite are never published.

DeepSpeed skips an fp16 step whose gradients overflowed; for bf16 and fp32 it applies
whatever it gets. :func:`guard_optimizer` wraps the *base* optimizer's ``step`` (the one
DeepSpeed calls after its own reduction, unscaling and clipping, on the fp32 master
partitions under ZeRO and BF16_Optimizer): if any gradient on any rank is inf or NaN, no
rank applies the step. The caller reads :attr:`StepGuard.skipped` after ``engine.step()``.
Clipping by a non-finite global norm turns every gradient non-finite, so the check sees a
spike on every rank; the flag is all-reduced anyway, for runs with clipping off.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class StepGuard:
    def __init__(self) -> None:
        self.skipped = False  # the last step call was not applied
        self.skipped_total = 0


def _any_nonfinite(grads: list[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(grads)  # one fused pass; inf/NaN survive the norm
    return (~torch.stack([n.float() for n in norms]).isfinite()).any().float()


def guard_optimizer(optimizer: torch.optim.Optimizer) -> StepGuard:
    """Wrap ``optimizer.step`` so a non-finite gradient anywhere skips the step everywhere."""
    guard, inner = StepGuard(), optimizer.step

    def step(*args, **kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        bad = _any_nonfinite(grads)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = grads[0].device if grads else torch.device("cpu")
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            bad = bad.to(device)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        guard.skipped = bool(bad.item())
        if guard.skipped:
            guard.skipped_total += 1
            return None
        return inner(*args, **kwargs)

    optimizer.step = step  # type: ignore[method-assign]  # instance attribute shadows the class's
    return guard
