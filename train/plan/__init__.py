"""cgpt.train.plan: the Chinchilla planner.

``recipes`` and published data live in :mod:`.rules` (with the rules fitted to them),
the planner in :mod:`.planner`, the library entry point ``plan(PlanRequest)`` in
:mod:`.request`, μP plans in :mod:`.mup`, memory per GPU in :mod:`.memory`, device specs in
:mod:`.devices`, and the one batch rule in :mod:`.batch`.
"""

from cgpt.train.plan.planner import Plan, plan_published
from cgpt.train.plan.request import PlanRequest, plan

__all__ = ["Plan", "PlanRequest", "plan", "plan_published"]
