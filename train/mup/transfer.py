"""μP hyperparameter transfer demonstration: does the best LR stay put as width grows?

The promise of μP (Tensor Programs V, arXiv 2203.03466; the reason Cerebras-GPT-μP tuned
once on a 40M proxy, docs/REFERENCE.md, Cerebras-GPT-μP): with the μP multipliers, init and
per-layer LRs, the loss-vs-LR curve keeps its minimum at the same base LR when the model
widens; under standard parameterization (SP) the optimum drifts (usually down) with width.

We sweep a log grid of LRs at two or three widths, under SP and under μP (base width = the
narrowest width), on byte-level windows of the offline corpus (Python stdlib source), with
the real optimizer groups and the plan's schedule shape (linear warmup, linear decay to
10%), then report the best LR per width and plot loss against LR (``lr_transfer.png``).
Every run sees the same batches; the loss is measured on fixed held-out windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cgpt.model import GPT
from cgpt.model.errors import CgptError
from cgpt.train.config import BatchPhase
from cgpt.train.figures import pyplot, save_figure
from cgpt.train.mup.coord_check import (
    batches,
    check_widths,
    corpus_bytes,
    make_optimizer,
    tiny_config,
)
from cgpt.train.plan.schedule import lr_in_phase

DEFAULT_LRS = tuple(2.0**e for e in range(-12, -3))  # 2.4e-4 ... 6.25e-2
HEAD_DIM = 32  # fixed head size: heads grow with width, as in the Cerebras family


@dataclass
class TransferResult:
    widths: list[int]
    lrs: list[float]
    steps: int
    # losses[param][str(width)] = held-out loss per LR (inf when the run diverged)
    losses: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    wall_s: float = 0.0

    def best_lr(self, param: str, width: int) -> float:
        vals = self.losses[param][str(width)]
        return self.lrs[int(np.argmin(vals))]

    def best_lrs(self, param: str) -> dict[int, float]:
        return {w: self.best_lr(param, w) for w in self.widths}

    def drift(self, param: str) -> float:
        """log2 of (best LR at the widest / best LR at the narrowest width): 0 = no drift."""
        b = self.best_lrs(param)
        return math.log2(b[self.widths[-1]] / b[self.widths[0]])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["losses"] = {
            p: {w: [v if math.isfinite(v) else None for v in vals] for w, vals in ws.items()}
            for p, ws in self.losses.items()
        }
        d["best_lr"] = {p: {str(w): lr for w, lr in self.best_lrs(p).items()} for p in self.losses}
        d["drift_log2"] = {p: self.drift(p) for p in self.losses}
        return d


def train_one(
    cfg, lr: float, train_batches, val_batches, seed: int = 0, warmup_frac: float = 0.1
) -> float:
    """Train from scratch with AdamW on cgpt's groups; held-out loss (inf if it diverged)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    opt = make_optimizer(model, lr)
    steps = len(train_batches)
    warmup = max(1, int(warmup_frac * steps))
    phase = BatchPhase(
        global_batch_seqs=1,
        steps=steps,
        warmup_steps=warmup,
        decay_steps=steps - warmup,
        decay="linear",
    )
    for step, (x, y) in enumerate(train_batches):
        peak_rel = lr_in_phase(phase, step, lr, lr * 0.1)  # docs/REFERENCE.md, Training recipe
        for g in opt.param_groups:
            g["lr"] = peak_rel * g["lr_scale"]
        loss = model(x, y)
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # global-norm clip 1.0 (docs/REFERENCE.md, Training recipe)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        val = float(np.mean([model(x, y).item() for x, y in val_batches]))
    return val if math.isfinite(val) else math.inf


def check_lrs(lrs) -> list[float]:
    lrs = sorted(set(float(v) for v in lrs))
    if len(lrs) < 3:
        raise CgptError(f"--lrs needs at least three learning rates to locate a minimum, got {lrs}")
    bad = [v for v in lrs if not (v > 0 and math.isfinite(v))]
    if bad:
        raise CgptError(f"--lrs: learning rates must be positive numbers, got {bad}")
    return lrs


def run_transfer(
    widths=(64, 128, 256),
    lrs=DEFAULT_LRS,
    steps: int = 200,
    batch: int = 8,
    seq_len: int = 64,
    n_layer: int = 2,
    params=("sp", "mup"),
    eval_batches: int = 16,
    seed: int = 0,
    data: np.ndarray | None = None,
    log=None,
) -> TransferResult:
    widths = check_widths(
        widths, HEAD_DIM, f"widths must be positive multiples of the head size {HEAD_DIM}"
    )
    lrs = check_lrs(lrs)
    if steps < 10:
        raise CgptError(f"--steps must be at least 10, got {steps}")
    data = corpus_bytes() if data is None else data
    split = int(0.9 * len(data))  # held-out tail for the loss
    train_b = batches(data[:split], steps, batch, seq_len, seed)
    val_b = batches(data[split:], eval_batches, batch, seq_len, seed + 1)
    res = TransferResult(widths=widths, lrs=lrs, steps=steps)
    t0 = time.time()
    for param in params:
        res.losses[param] = {}
        for w in widths:
            cfg = tiny_config(w, param == "mup", widths[0], n_layer, w // HEAD_DIM, seq_len)
            vals = []
            for lr in lrs:
                vals.append(train_one(cfg, lr, train_b, val_b, seed))
                if log:
                    log(
                        f"{param:>3} width {w:>4} lr {lr:.3g}: loss {vals[-1]:.4f} "
                        f"({time.time() - t0:.0f}s)"
                    )
            res.losses[param][str(w)] = vals
    res.wall_s = time.time() - t0
    return res


def plot_transfer(res: TransferResult, path: str | Path) -> None:
    """Loss against LR, a line per width; SP left, μP right; the best LR of each is marked."""
    plt = pyplot()
    params = list(res.losses)
    fig, axes = plt.subplots(
        1, len(params), figsize=(5.5 * len(params), 4.2), squeeze=False, sharey=True
    )
    finite = [
        v for ws in res.losses.values() for vals in ws.values() for v in vals if math.isfinite(v)
    ]
    top = min(max(finite), np.percentile(finite, 25) + 1.0) if finite else 1.0
    cmap = plt.get_cmap("plasma")
    for ax, param in zip(axes[0], params):
        for i, w in enumerate(res.widths):
            vals = [v if math.isfinite(v) else np.nan for v in res.losses[param][str(w)]]
            color = cmap(i / max(1, len(res.widths)))
            ax.plot(res.lrs, vals, marker="o", ms=3, color=color, label=f"width {w}")
            best = res.best_lr(param, w)
            ax.axvline(best, color=color, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(top=top)
        title = "SP" if param == "sp" else f"μP (base width {res.widths[0]})"
        ax.set_title(f"{title}: best-LR drift {res.drift(param):+.0f} octaves", fontsize=10)
        ax.set_xlabel("learning rate (base LR; μP hidden matrices use LR/m)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"held-out loss after {res.steps} steps (nats/byte)")
    fig.tight_layout()
    save_figure(fig, path)


__all__ = ["run_transfer", "plot_transfer", "TransferResult", "train_one", "DEFAULT_LRS"]
