"""LM head + cross-entropy in one autograd op that never materialises fp32 logits.

The usual loss, ``F.cross_entropy(lm_head(x).float(), y)``, keeps the (N, V) logits, an fp32
copy of them and the fp32 log-softmax alive for the backward pass, and the backward walks
them again (nll → log-softmax → cast). At V = 50,257 that (N, V) traffic is a large share
of a small model's step. Here the logits are made a block of rows at a time; each block's
log-probabilities, loss and gradient (softmax − one-hot, in fp32) are computed while the
block is still in cache, and only that gradient is kept, in the input dtype. The backward
is then two matmuls. Same mathematics as the usual loss (mean over targets != -1); tests check
values and gradients against it.
"""

from __future__ import annotations

import torch

from cgpt.model.ce_blocks import block_rows

IGNORE = -1  # target value that contributes nothing (as F.cross_entropy(ignore_index=-1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, need_grad: bool):
        N, V = x.size(0), weight.size(0)
        valid = targets != IGNORE
        masked = not bool(valid.all())  # training batches have no ignored targets: skip a pass
        safe = torch.where(valid, targets, 0)
        count = valid.sum().clamp_min(1).to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        glog = torch.empty((N, V), dtype=x.dtype, device=x.device) if need_grad else None
        rows = block_rows(V, x.device.type)
        for s in range(0, N, rows):
            e = min(s + rows, N)
            # one fused pass from the block's logits (input dtype) to fp32 log-probabilities
            logp = torch.log_softmax(x[s:e] @ weight.t(), dim=-1, dtype=torch.float32)
            t = safe[s:e, None]
            m = valid[s:e]
            total -= (logp.gather(1, t).squeeze(1) * m).sum()
            if need_grad:  # d loss_i / d logits_i = softmax_i - onehot_i (0 for ignored rows)
                probs = logp.exp_()
                probs.scatter_add_(1, t, torch.full_like(t, -1, dtype=probs.dtype))
                if masked:
                    probs.mul_(m[:, None])
                assert glog is not None  # allocated above whenever need_grad
                glog[s:e] = probs
        if need_grad:
            ctx.save_for_backward(x, weight, glog, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        x, weight, glog, count = ctx.saved_tensors
        scale = (grad_loss / count).to(x.dtype)
        # the scale goes on the (N, d) operands, not the (V, d) weight gradient: cheaper
        grad_x = (glog @ weight).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_w = glog.t() @ (x * scale) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


@torch.compiler.disable  # torch.compile of the model: a graph break here, the op runs eager
def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` against ``targets`` (-1 = ignore).

    x (..., d), weight (V, d), targets (...) -> scalar fp32. Equal to
    ``F.cross_entropy((x @ weight.T).float().view(-1, V), targets.view(-1), ignore_index=-1)``.
    """
    x2 = x.reshape(-1, x.size(-1))
    need_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    dev = x.device.type
    if torch.is_autocast_enabled(dev):  # cast once here, not once per block inside
        dt = torch.get_autocast_dtype(dev)
        x2, weight = x2.to(dt), weight.to(dt)
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(x2, weight, targets.reshape(-1), need_grad)
