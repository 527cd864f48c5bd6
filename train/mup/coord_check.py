"""μP coordinate check: do activation scales stay flat as the model widens?

The classic μP diagnostic (Yang et al., "Tensor Programs V", arXiv 2203.03466): a few steps
at several widths with the same base hyperparameters, then the slope of log(activation scale)
against log(width) per layer. The check passes when μP is flat and standard parameterization
is not. Models, training and why SP grows: docs/DESIGN-NOTES.md, mup/coord_check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cgpt.model import GPT, GPTConfig
from cgpt.model.config import MuPConfig
from cgpt.model.errors import CgptError
from cgpt.train.data.sources import iter_documents
from cgpt.train.figures import pyplot, save_figure
from cgpt.train.loop.optim import param_groups

BYTE_VOCAB = 256
# A parameterization is "flat" when every recorded layer's slope of log(mean |x|) against
# log(width) at the last step is below this. A correlated Adam update grows like width^1;
# measured here (widths 64..512, lr 6e-3): SP hidden outputs ~1.7, logits ~0.6, μP < 0.1.
MAX_ABS_SLOPE = 0.25


# ---- data ------------------------------------------------------------------------------
def corpus_bytes(max_bytes: int = 2_000_000) -> np.ndarray:
    """UTF-8 bytes of the offline corpus (Python stdlib source), deterministic order."""
    chunks, total = [], 0
    for text in _stdlib_documents():
        b = text.encode("utf-8", errors="replace")
        chunks.append(b)
        total += len(b)
        if total >= max_bytes:
            break
    if not chunks:
        raise CgptError("the offline corpus (Python stdlib source) is empty on this machine")
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8).copy()


def _stdlib_documents():
    yield from iter_documents("stdlib")


def batches(data: np.ndarray, n: int, batch: int, seq_len: int, seed: int):
    """`n` random (x, y) byte windows, identical for every width (same seed)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(data.astype(np.int64))
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(t) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([t[s : s + seq_len] for s in starts.tolist()])
        y = torch.stack([t[s + 1 : s + seq_len + 1] for s in starts.tolist()])
        out.append((x, y))
    return out


# ---- models ----------------------------------------------------------------------------
def tiny_config(
    width: int, mup: bool, base_width: int, n_layer: int = 2, n_head: int = 4, seq_len: int = 64
) -> GPTConfig:
    """A byte-level GPT; SP = Cerebras standard init, μP = Cerebras μP at `base_width`."""
    return GPTConfig(
        n_layer=n_layer,
        n_embd=width,
        n_head=n_head,
        vocab_size=BYTE_VOCAB,
        n_positions=seq_len,
        mup=MuPConfig(base_width=base_width) if mup else None,
    )


def make_optimizer(model: GPT, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW (betas/eps of docs/REFERENCE.md, Training recipe) on cgpt's groups;
    each group's LR is lr·lr_scale."""
    groups = param_groups(model, weight_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def layer_names(n_layer: int) -> list[str]:
    names = ["embedding"]
    for i in range(n_layer):
        names += [f"h.{i}.attn", f"h.{i}.mlp"]
    return names + ["logits"]


def _hook_modules(model: GPT) -> dict[str, torch.nn.Module]:
    """Where each recorded activation comes out. `drop` sees the embedding sum after the μP
    multiplier; `lm_head` gives the logits before the output multiplier (measure_width
    applies it)."""
    blocks = model.transformer["h"]
    assert isinstance(blocks, torch.nn.ModuleList)
    mods: dict[str, torch.nn.Module] = {"embedding": model.transformer["drop"]}
    for i, block in enumerate(blocks):
        mods[f"h.{i}.attn"] = block.get_submodule("attn")
        mods[f"h.{i}.mlp"] = block.get_submodule("mlp")
    mods["logits"] = model.lm_head
    return mods


def measure_width(cfg: GPTConfig, data_batches, lr: float, seed: int) -> dict[str, list[float]]:
    """Mean |x| per layer at steps 0..len(data_batches)-1 (step t = after t updates)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    model.fused_loss = False  # the "logits" hook reads lm_head's output, which the fused loss skips
    opt = make_optimizer(model, lr)
    rec: dict[str, list[float]] = {n: [] for n in layer_names(cfg.n_layer)}

    def hook(name):
        scale = model.output_multiplier if name == "logits" else 1.0

        def fn(_mod, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            rec[name].append(t.detach().abs().mean().item() * scale)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in _hook_modules(model).items()]
    try:
        for t, (x, y) in enumerate(data_batches):
            if t == len(data_batches) - 1:
                with torch.no_grad():
                    model(x, y)
                break
            loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return rec


# ---- the check -------------------------------------------------------------------------
@dataclass
class CoordCheckResult:
    widths: list[int]
    steps: int
    lr: float
    # scales[param][layer] = [[mean |x| per width] per step], param in ("sp", "mup")
    scales: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    # slopes[param][layer] = slope of log(scale) vs log(width) at the last step
    slopes: dict[str, dict[str, float]] = field(default_factory=dict)

    def max_abs_slope(self, param: str) -> float:
        return max(abs(v) for v in self.slopes[param].values())

    def flat(self, param: str) -> bool:
        """Every recorded layer's scale is flat in width at the last step."""
        return self.max_abs_slope(param) < MAX_ABS_SLOPE

    @property
    def passed(self) -> bool:
        """μP is flat, and SP is not (so the check had the power to catch a blow-up)."""
        return self.flat("mup") and not self.flat("sp")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            passed=self.passed,
            mup_flat=self.flat("mup"),
            sp_flat=self.flat("sp"),
            max_abs_slope={p: self.max_abs_slope(p) for p in self.slopes},
            threshold=MAX_ABS_SLOPE,
        )
        return d


def loglog_slope(widths, values) -> float:
    """Least-squares slope of log(values) against log(widths)."""
    x = np.log(np.asarray(widths, dtype=float))
    y = np.log(np.maximum(np.asarray(values, dtype=float), 1e-30))
    return float(np.polyfit(x, y, 1)[0])


def check_widths(widths, divisor: int, rule: str) -> list[int]:
    """Sorted distinct widths, at least two, each a positive multiple of `divisor`
    (`rule` says which, for the message)."""
    widths = sorted(set(int(w) for w in widths))
    if len(widths) < 2:
        raise CgptError(f"--widths needs at least two different widths, got {widths}")
    bad = [w for w in widths if w <= 0 or w % divisor]
    if bad:
        raise CgptError(f"--widths {bad}: {rule}")
    return widths


def run_coord_check(
    widths=(64, 128, 256, 512),
    steps: int = 5,
    lr: float = 6e-3,
    n_layer: int = 2,
    n_head: int = 4,
    seq_len: int = 64,
    batch: int = 8,
    seeds: int = 2,
    data: np.ndarray | None = None,
    log=None,
    params=("sp", "mup"),
) -> CoordCheckResult:
    """Train `steps` steps at each width under SP and μP; scales are geometric means over
    `seeds` initialisations (the same data batches for every width and seed)."""
    widths = check_widths(
        widths, n_head, f"every width must be a positive multiple of n_head={n_head}"
    )
    if steps < 1:
        raise CgptError(f"--steps must be at least 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise CgptError(f"--lr must be a positive number, got {lr}")
    data = corpus_bytes() if data is None else data
    data_batches = batches(data, steps + 1, batch, seq_len, seed=0)
    res = CoordCheckResult(widths=widths, steps=steps, lr=lr)
    names = layer_names(n_layer)
    for param in params:
        logs = np.zeros((len(names), steps + 1, len(widths)))  # summed log scales
        for wi, w in enumerate(widths):
            cfg = tiny_config(w, param == "mup", widths[0], n_layer, n_head, seq_len)
            for s in range(seeds):
                rec = measure_width(cfg, data_batches, lr, seed=s)
                logs[:, :, wi] += np.log(np.array([rec[n] for n in names]))
            if log:
                log(
                    f"{param:>3} width {w:>5}: mean|logits| at step {steps} = "
                    f"{math.exp(logs[-1, -1, wi] / seeds):.4g}"
                )
        scales = np.exp(logs / seeds)
        res.scales[param] = {n: scales[i].tolist() for i, n in enumerate(names)}
        res.slopes[param] = {n: loglog_slope(widths, scales[i, -1]) for i, n in enumerate(names)}
    return res


def plot_coord_check(res: CoordCheckResult, path: str | Path) -> None:
    """Rows = layers, columns = SP | μP; x = width (log), y = mean |x| (log), a line per step."""
    plt = pyplot()
    names = list(res.scales["sp"])
    fig, axes = plt.subplots(
        len(names), 2, figsize=(9, 2.2 * len(names)), squeeze=False, sharex=True
    )
    cmap = plt.get_cmap("viridis")
    for col, param in enumerate(("sp", "mup")):
        for row, name in enumerate(names):
            ax = axes[row][col]
            for t, vals in enumerate(res.scales[param][name]):
                ax.plot(
                    res.widths,
                    vals,
                    marker="o",
                    ms=3,
                    color=cmap(t / max(1, res.steps)),
                    label=f"step {t}",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            title = "SP" if param == "sp" else "μP"
            ax.set_title(f"{title}: {name} (slope {res.slopes[param][name]:+.2f})", fontsize=9)
            if row == len(names) - 1:
                ax.set_xlabel("width (n_embd)")
            if col == 0:
                ax.set_ylabel("mean |x|")
    axes[0][1].legend(fontsize=7, loc="best")
    verdict = "PASS" if res.passed else "FAIL"
    verdict += f"; max |slope| SP {res.max_abs_slope('sp'):.2f}, μP {res.max_abs_slope('mup'):.2f}"
    fig.suptitle(
        f"coordinate check ({verdict}): lr {res.lr:g}, {res.steps} Adam steps", fontsize=11
    )
    fig.tight_layout()
    save_figure(fig, path)


__all__ = [
    "run_coord_check",
    "plot_coord_check",
    "CoordCheckResult",
    "loglog_slope",
    "corpus_bytes",
    "batches",
    "tiny_config",
    "make_optimizer",
    "MAX_ABS_SLOPE",
    "check_widths",
]
