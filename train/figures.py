"""Matplotlib for every plot the project writes: the Agg backend (no display) and an atomic
save (temporary name in the same folder, then rename), so an interrupted plot never leaves
a half-written PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` to `path` atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".") or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
