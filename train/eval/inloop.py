"""In-loop lm-eval tasks for the trainer (``runtime.eval_tasks``).

:func:`check_tasks` runs at start-up with the other checks (lm-eval installed, task names
known, datasets reachable, a tokenizer to export with): a bad task list fails before the
run folder is touched. :func:`evaluate_tasks` runs on rank 0 at every evaluation and returns
``{"eval/TASK/METRIC": value}`` for the same metrics row as the val loss; under ZeRO-3 every
rank takes part in gathering the weights first.
"""

from __future__ import annotations

import contextlib

from cgpt.model.errors import CgptError
from cgpt.train.eval import harness, run_tasks
from cgpt.train.eval.paper import expand_tasks


def check_tasks(tasks: list[str], include_path: str | None, tokenizer_dir: str | None) -> None:
    if not tokenizer_dir:
        raise CgptError(
            "runtime.eval_tasks needs a tokenizer to export the model for lm-eval: set "
            "data.tokenizer (or prepare the data with cgpt prepare, which records it)"
        )
    names = expand_tasks(list(tasks))
    tm = harness.task_manager_for(names, include_path)
    harness.preflight(tm, names, None, harness.hub_state_for(tm, names))


def evaluate_tasks(
    engine, runtime, tokenizer_dir: str | None, is_main: bool, zero_stage: int, device
):
    gather = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(
            list(engine.module.parameters()), modifier_rank=None
        )
    with gather:
        if not is_main:
            return {}
        assert tokenizer_dir is not None  # check_tasks refused eval_tasks without one (rank 0)
        return run_tasks(
            engine.module,
            tokenizer_dir,
            runtime.eval_tasks,
            runtime.eval_limit,
            runtime.eval_include_path,
            device=device,
        )
