"""What every sweep fit shares: the error a fit raises when its points cannot make it (with
how many more it needs), R², finite-or-None, and a power law fitted in log-log space."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from cgpt.model.errors import CgptError


class FitError(CgptError):
    """A fit that cannot be made from the points given (says how many more it needs)."""


def more(needed: int, have: int, what: str) -> str:
    """The end of a FitError message: how many ``what`` a fit needs and how many to add."""
    return f"needs at least {needed} {what}, has {have}: add {needed - have} more"


def r2(y: np.ndarray, yhat: np.ndarray) -> float:
    """R² of ``yhat`` against ``y`` (NaN when y is constant)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - yhat) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def finite(x: float) -> float | None:
    """``x`` as a float, or None when it is None or not finite (for JSON)."""
    return float(x) if x is not None and math.isfinite(x) else None


def power_law(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """y = k·x^e fitted in log-log space, with the slope's standard error."""
    res = stats.linregress(np.log10(x), np.log10(y))
    out = {
        "exponent": float(res.slope),
        "coefficient": float(10**res.intercept),
        "r2": finite(res.rvalue**2) if len(x) > 2 else None,
        "exponent_stderr": finite(res.stderr) if len(x) > 2 else None,
    }
    return out
