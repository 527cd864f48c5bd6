"""The Chinchilla planner: a size or a budget -> a complete training recipe (pure functions).

The planner's names in one place: ``plan_published`` (the paper's runs), ``plan_for_params``,
``plan_for_shape``, ``plan_for_flops``, ``plan_for_gpu_hours`` (the family's rules) and
``with_cluster`` (GPUs, memory, time), each from the module named for what it does. The map:
docs/DESIGN-NOTES.md, plan/planner.

    python -m cgpt.train.plan.planner --write-configs configs/  # regenerate the shipped configs
"""

from __future__ import annotations

from cgpt.train.plan.budget import params_for_budget, plan_for_flops, plan_for_gpu_hours
from cgpt.train.plan.cluster import time_on, with_cluster
from cgpt.train.plan.continued import CPT_WARMUP_FRACTION, plan_continued
from cgpt.train.plan.family import plan_for_params, plan_for_shape
from cgpt.train.plan.published import (
    CONFIG_DATA,
    CONFIG_GPU,
    CONFIG_GPUS,
    CONFIG_HEADER,
    config_text,
    plan_published,
    published_run_config,
    rule_deviations,
    rule_plan_for,
    write_configs,
)
from cgpt.train.plan.recipes import check_recipe
from cgpt.train.plan.result import Cluster, Plan, make_plan, slug
from cgpt.train.plan.shape import PARAM_COUNTS, param_counter, shape_for_params

__all__ = [
    "CONFIG_DATA",
    "CONFIG_GPU",
    "CONFIG_GPUS",
    "CONFIG_HEADER",
    "CPT_WARMUP_FRACTION",
    "PARAM_COUNTS",
    "Cluster",
    "Plan",
    "check_recipe",
    "config_text",
    "make_plan",
    "param_counter",
    "params_for_budget",
    "plan_continued",
    "plan_for_flops",
    "plan_for_gpu_hours",
    "plan_for_params",
    "plan_for_shape",
    "plan_published",
    "published_run_config",
    "rule_deviations",
    "rule_plan_for",
    "shape_for_params",
    "slug",
    "time_on",
    "with_cluster",
    "write_configs",
]

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-configs", metavar="DIR", required=True)
    for p in write_configs(ap.parse_args().write_configs):
        print(p)
