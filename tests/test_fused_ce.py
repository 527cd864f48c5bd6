"""The fused LM head + cross-entropy equals the plain loss, in value and in gradients."""

import pytest
import torch
import torch.nn.functional as F

from cgpt.model import GPT, GPTConfig, ce_blocks, fused_ce
from cgpt.model.config import MuPConfig


def _plain(x, w, y):
    return F.cross_entropy((x @ w.t()).float(), y, ignore_index=-1)


def _grads(fn, x, w, y, scale=1.0):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    loss = fn(x, w, y)
    (loss * scale).backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("n", [1, 37, 300])  # one row, fewer rows than a block, several blocks
def test_matches_plain_loss_fp32(monkeypatch, n):
    monkeypatch.setattr(ce_blocks, "BLOCK_ELEMENTS", 16 * 101)  # 16-row blocks
    torch.manual_seed(0)
    x, w = torch.randn(n, 24), torch.randn(101, 24) * 0.3
    y = torch.randint(0, 101, (n,))
    if n > 1:
        y[::5] = -1
    ref = _grads(_plain, x, w, y, scale=3.0)
    got = _grads(fused_ce.linear_cross_entropy, x, w, y, scale=3.0)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_bf16_close_to_fp32_reference():
    torch.manual_seed(1)
    x, w = torch.randn(64, 32), torch.randn(500, 32) * 0.2
    y = torch.randint(0, 500, (64,))
    ref = _grads(_plain, x, w, y)
    got = _grads(fused_ce.linear_cross_entropy, x.bfloat16(), w.bfloat16(), y)
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    assert abs(got[0].item() - ref[0].item()) < 2e-2
    for a, b in zip(ref[1:], got[1:]):
        assert (b.float() - a).abs().max() < 2e-2 * a.abs().max()


def test_autocast_and_no_grad():
    torch.manual_seed(2)
    x, w = torch.randn(2, 8, 16), torch.randn(50, 16)
    y = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        plain = _plain(x.view(-1, 16), w, y.view(-1))
        assert torch.allclose(fused_ce.linear_cross_entropy(x, w, y), plain, atol=1e-5)
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_ce.linear_cross_entropy(x, w, y)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - plain.item()) < 5e-2
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("mup", [False, True])
def test_model_fused_equals_plain_path(mup):
    cfg = GPTConfig(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=97,
        n_positions=16,
        mup=MuPConfig(base_width=16) if mup else None,
    )
    torch.manual_seed(0)
    idx, tgt = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GPT(cfg)
        model.fused_loss = fused
        loss = model(idx, tgt)
        assert loss.dim() == 0  # one return type, whichever way the loss is computed
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6)
