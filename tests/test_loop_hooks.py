"""The step loop's hook interface (cgpt.train.loop.hooks), seen by a hook added after the
trainer's own components on a real tiny run: called after every step with the shared state,
the eval and checkpoint components already done for that step, once at the finish, closed
on the way out."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_byte_data, make_cfg

from cgpt.train.config import parse_run_config
from cgpt.train.loop import trainer
from cgpt.train.loop.hooks import LoopHook, LoopState, Status, StepStats


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes")


class Recorder(LoopHook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        saved = state.saved.name if state.saved else None
        self.calls.append(("step", state.step, state.eval_step, saved, stats.loss == state.loss))

    def on_finish(self, state: LoopState, status: Status) -> None:
        self.calls.append(("finish", status, state.eval_step, state.saved_step))

    def close(self) -> None:
        self.calls.append(("close",))


def test_hooks_see_every_step_after_eval_and_save_then_finish_and_close(
    tmp_path, data, monkeypatch
):
    rec, real_start = Recorder(), trainer._start

    def start(run, loop, ds_config):
        stop = real_start(run, loop, ds_config)
        loop.hooks.append(rec)  # after metrics, eval, checkpoints, watchdog, stop requests
        return stop

    monkeypatch.setattr(trainer, "_start", start)
    cfg = parse_run_config(make_cfg(tmp_path, data, steps=5, eval_every=2, save_every=3))
    summary = trainer.train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 5
    assert rec.calls == [
        ("step", 1, -1, None, True),
        ("step", 2, 2, None, True),  # evaluated before this hook ran
        ("step", 3, 2, "step-3", True),  # saved before this hook ran
        ("step", 4, 4, "step-3", True),
        ("step", 5, 4, "step-3", True),
        ("finish", "completed", 5, 5),  # the final eval and save came first
        ("close",),  # closed first: hooks close in reverse order
    ]
