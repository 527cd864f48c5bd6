"""Matplotlib for every plot the project writes: the Agg backend (no display) and an atomic
save (temporary name in the same folder, then rename), so an interrupted plot never leaves
a half-written PNG; the published file follows the umask."""

from __future__ import annotations

import os
from pathlib import Path

from cgpt.model.files import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` to `path` atomically (with the user's umask mode) and close it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    finally:
        pyplot().close(fig)
    return path
