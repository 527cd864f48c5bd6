"""Evaluation noise of a run's final val loss: the loss of every val window the trainer
evaluates, and a bootstrap over those windows, the part of a prediction error that is the
val set's and not the law's (docs/SCALING.md, Evaluation noise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cgpt.model.errors import CgptError
from cgpt.train.config import load_run_config


def window_losses(run_dir: str | os.PathLike) -> np.ndarray:
    """Mean next-token loss of each val window the run's trainer evaluated, from its final
    ``model.safetensors``; their mean is the run's final ``val_loss`` (summary.json)."""
    # torch (and the modules built on it) only when a run is scored, not for the bootstrap
    import torch

    from cgpt.model.io import load_model
    from cgpt.train.data.loader import TokenLoader

    run = Path(run_dir)
    if not (run / "model.safetensors").is_file():
        raise CgptError(f"{str(run)!r} has no model.safetensors (a finished run writes one)")
    cfg = load_run_config(run / "config.yaml")
    if cfg.data.path is None:  # its val_loss is a weighted mean over several val sets
        raise CgptError(
            f"{str(run)!r} was trained on a data mixture (data.sources); evaluation noise "
            "scores the val windows of a one-folder run (data.path)"
        )
    model = load_model(run / "model.safetensors").float().eval()
    loader = TokenLoader(cfg.data.path, cfg.plan.seq_len, split="val")
    out = []
    with torch.no_grad():
        for x, y in loader.val_batches(cfg.runtime.eval_batches, cfg.runtime.micro_batch):
            logits = model(x)
            ce = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), y.flatten(), reduction="none"
            )
            out.append(ce.view(x.shape).mean(dim=1).double().numpy())
    return np.concatenate(out)


def bootstrap_noise(losses, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """sd (and sd / mean) of the mean loss over windows resampled with replacement."""
    x = np.asarray(losses, dtype=float)
    if x.size < 2:
        raise CgptError("an evaluation-noise bootstrap needs at least 2 val windows")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    mean = float(x.mean())
    sd = float(means.std(ddof=1))
    return {"val_loss": mean, "windows": int(x.size), "sd": sd, "rel_sd": sd / mean}


def run_eval_noise(run_dir: str | os.PathLike, n_boot: int = 2000) -> dict[str, Any]:
    """:func:`bootstrap_noise` of :func:`window_losses` of one finished run."""
    return {"run_dir": str(run_dir), **bootstrap_noise(window_losses(run_dir), n_boot)}
