"""cgpt.train.plan: the Chinchilla planner.

Published recipes and the rules fitted to them live in :mod:`.rules`, the planner in
:mod:`.planner`, the library entry point ``plan(PlanRequest)`` in :mod:`.request`, μP plans
in :mod:`.mup`, memory per GPU in :mod:`.memory`, device specs in :mod:`.devices`, and the
one batch rule in :mod:`.batch`::

    from cgpt.train.plan import PlanRequest, plan
    p = plan(PlanRequest(size="1.3B", gpus=48, gpu="h100"))
"""

from __future__ import annotations

import importlib

# loaded on first use (PEP 562), so `python -m cgpt.train.plan.planner` runs its module once
_EXPORTS = {
    "Plan": "planner",
    "plan_published": "planner",
    "PlanRequest": "request",
    "plan": "request",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
