"""The step loop's one hook interface: the state it shares and the calls it makes.

The loop (cgpt.train.loop.trainer) runs the optimizer steps; everything periodic (metrics,
in-loop eval, checkpoints, the watchdog, stop requests: cgpt.train.loop.components) is a
:class:`LoopHook` it calls at fixed points, in the order of its hook list, so every side
effect (log line, save, collective, RNG draw) keeps one order: bitwise resume relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["completed", "stopped", "preempted"]


@dataclass
class LoopState:
    """Where the run stands; a checkpoint's trainer state and the summary are made from it."""

    end: int  # the step this invocation stops at (plan.steps, or runtime.max_steps)
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on, all ranks
    loss: float | None = None  # the last step's global mean loss
    val_loss: float | None = None  # the last evaluation's
    eval_step: int = -1  # the step of the last evaluation
    saved: Path | None = None  # the newest checkpoint folder
    saved_step: int = -1  # its step
    stopping: bool = False  # a rank was asked to stop before this step's loss all-reduce


@dataclass(frozen=True)
class StepStats:
    """One finished optimizer step, as metrics.jsonl records it."""

    loss: float
    lr: float
    grad_norm: float | None
    tokens_per_s: float
    mfu: float | None
    step_time_s: float
    eta_s: float


class LoopHook:
    """A component the loop calls; every method is a no-op unless overridden."""

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        """After every optimizer step (``state.step`` counts it), in hook-list order."""

    def on_finish(self, state: LoopState, status: Status) -> None:
        """Once, after the last step, in hook-list order."""

    def close(self) -> None:
        """On the way out, also after a failure; hooks close in reverse order."""
