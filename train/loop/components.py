"""The step loop's components, each a :class:`~cgpt.train.loop.hooks.LoopHook`: metrics rows,
in-loop evaluation, checkpoints, the step watchdog and stop requests (signals).

The trainer calls them in this order after every step and at the end; each owns one kind of
periodic work and the state it needs, so the loop itself only runs optimizer steps.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints import universal
from cgpt.train.checkpoints.resume import resume_command
from cgpt.train.data.mixture import MixtureLoader, ValSets
from cgpt.train.distributed import all_sum
from cgpt.train.eval.inloop import evaluate_tasks
from cgpt.train.loop.hooks import LoopHook, LoopState, Status, StepStats
from cgpt.train.loop.startup import Run
from cgpt.train.loop.watchdog import StepWatchdog
from cgpt.train.metrics import MetricsLogger, eta_text
from cgpt.train.terminal import leave_a_hung_up_terminal


class MetricsHook(LoopHook):
    """Every step's row (metrics.jsonl, console, wandb) and, after the second step run here
    (the first warms up), the ETA line."""

    def __init__(self, log: MetricsLogger):
        self.log, self.ran = log, 0

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        self.log.log(
            {
                "step": state.step,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "tokens": state.tokens,
                "tokens_per_s": stats.tokens_per_s,
                "mfu": stats.mfu,
                "step_time_s": stats.step_time_s,
                "eta_s": stats.eta_s,
            }
        )
        self.ran += 1
        left, dt = state.end - state.step, stats.step_time_s
        if self.ran == 2 and left > 0:
            self.log.message(f"ETA {eta_text(dt * left)} for {left} more steps ({dt:.3g} s/step)")

    def close(self) -> None:
        self.log.close()


@torch.no_grad()
def evaluate(engine, batches, dev) -> float:
    """Mean loss over the fixed val batches of all ranks."""
    engine.eval()
    s, n = 0.0, 0
    for x, y in batches:
        loss = engine(x.to(dev), y.to(dev))
        s, n = s + loss.float().item() * x.size(0), n + x.size(0)
    engine.train()
    total, count = all_sum([s, n], dev)
    return total / max(count, 1)


class EvalHook(LoopHook):
    """Val loss on every val set's fixed batches and runtime.eval_tasks (lm-eval, rank 0):
    every runtime.eval_every steps, and at the end unless the last step was evaluated."""

    def __init__(
        self,
        run: Run,
        engine,
        loader: MixtureLoader,
        val_sets: ValSets,
        log: MetricsLogger,
        beat: Callable[[int], None],
    ):
        self.run, self.engine, self.loader, self.val_sets = run, engine, loader, val_sets
        self.log, self.beat = log, beat

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        every = self.run.cfg.runtime.eval_every
        if every and state.step % every == 0:
            self.evaluate(state)

    def on_finish(self, state: LoopState, status: Status) -> None:
        if status != "preempted" and state.eval_step != state.step:
            self.evaluate(state)

    def evaluate(self, state: LoopState) -> None:
        dev = self.run.dist.device
        row = self.val_sets.evaluate(lambda batches: evaluate(self.engine, batches, dev))
        state.val_loss = row["val_loss"]
        state.eval_step = state.step
        data = self.loader.stats() if self.val_sets.mix.explicit else {}
        rt, tasks = self.run.cfg.runtime, {}
        if rt.eval_tasks:  # rank 0 runs lm-eval; the others wait in the next collective
            t0 = time.perf_counter()
            tasks = evaluate_tasks(
                self.engine, rt, self.run.tokenizer_dir, self.run.dist.is_main, rt.zero_stage, dev
            )
            if tasks:
                tasks["eval/time_s"] = time.perf_counter() - t0
            self.beat(state.step)  # lm-eval can take many step times
        self.log.log({"step": state.step, "tokens": state.tokens, **row, **data, **tasks})


class CheckpointHook(LoopHook):
    """Checkpoints of the engine, the loader and the loop state: every runtime.save_every
    steps, at runtime.save_steps, when a stop was requested, and at the end; and the restore
    a resume starts from."""

    def __init__(self, run: Run, engine, loader: MixtureLoader):
        self.run, self.engine, self.loader = run, engine, loader
        self.store = ckpt.Checkpointer(run.run_dir, run.cfg.runtime.keep_last, run.dist.rank)

    def restore(self, state: LoopState) -> str:
        """Load the resume point into the engine, loader and ``state``; returns the note."""
        folder = self.run.resume_from
        assert folder is not None  # the trainer restores only a run with a resume point
        load_weights = None
        if self.run.point.universal:  # another world size or ZeRO stage: converted already
            converted = universal.published(folder)
            if converted is not None:
                load_weights = functools.partial(universal.load, universal=converted)
        st = self.store.load(self.engine, folder, load_weights)
        self.loader.load_state_dict(st["loader"])
        state.step, state.tokens = int(st["step"]), int(st["tokens"])
        state.loss, state.val_loss = st.get("loss"), st.get("val_loss")
        state.eval_step = int(st.get("eval_step", -1))
        state.saved, state.saved_step = folder, state.step
        return f"resumed from {folder} (step {state.step}, {state.tokens:,} tokens)"

    def save(self, state: LoopState) -> None:
        if state.saved_step == state.step:
            return
        trainer_state = {
            "step": state.step,
            "tokens": state.tokens,
            "loader": self.loader.state_dict(),
            "world_size": self.run.dist.world_size,
            "zero_stage": self.run.cfg.runtime.zero_stage,
            "loss": state.loss,
            "val_loss": state.val_loss,
            "eval_step": state.eval_step,
            "time": time.time(),
        }
        state.saved = self.store.save(self.engine, state.step, trainer_state, self.run.cfg)
        state.saved_step = state.step

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        rt = self.run.cfg.runtime
        if (rt.save_every and state.step % rt.save_every == 0) or state.step in rt.save_steps:
            self.save(state)
        if state.stopping:  # a signal seen by any rank before this step's loss all-reduce
            self.save(state)

    def on_finish(self, state: LoopState, status: Status) -> None:
        if status != "preempted":  # a preempted run saved its last step already
            self.save(state)


class WatchdogHook(LoopHook):
    """The step watchdog (cgpt.train.loop.watchdog): a beat after every step."""

    def __init__(self, watchdog: StepWatchdog):
        self.watchdog = watchdog

    def on_step_end(self, state: LoopState, stats: StepStats) -> None:
        if not state.stopping:  # the run saves and ends at this step: nothing more to time
            self.watchdog.beat(state.step)

    def close(self) -> None:
        self.watchdog.close()


class StopRequests(LoopHook):
    """SIGTERM, SIGINT, SIGUSR1 and SIGHUP set a flag; every rank saves the same step at the
    next step boundary (the flags ride on the loss all-reduce) and the run exits PREEMPTED.
    SIGHUP is a closed terminal: the console moves to /dev/null (cgpt.train.terminal), and
    summary.json records the stop (status preempted) and its checkpoint.

    SIGUSR1 is the stop that launchers let through: `cgpt launch` and the sbatch script
    start the launcher with SIGUSR1 ignored, so deepspeed's and torchrun's launchers (which
    kill their workers on SIGTERM/SIGINT) inherit SIG_IGN and survive it, and only the
    ranks, whose handler replaces the inherited disposition here, act on it. Once the loop
    is over a late SIGUSR1 is ignored and a late SIGHUP only moves the console (the run is
    finishing anyway: its last save, export and summary)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self, run_dir: Path, world_size: int, message: Callable[[str], None]):
        self.run_dir, self.world_size, self.message = run_dir, world_size, message
        self.signal: str | None = None
        self._old: dict = {}

    def __enter__(self) -> StopRequests:
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no preemption handling
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        leave_a_hung_up_terminal()  # a stop after a hangup (SIGHUP; cgpt launch's SIGUSR1)

    def __exit__(self, exc_type, *exc):
        for s, h in self._old.items():
            if s == signal.SIGTERM and exc_type is not None:
                # the run is failing (e.g. a dead peer): a launcher SIGTERMs the remaining
                # ranks as soon as one exits, which must not cut this rank's one-line report
                # short; the entry point restores SIGTERM once the report is out
                continue
            if s == signal.SIGHUP:  # a closed terminal while the run finishes: finish
                signal.signal(s, lambda *_: leave_a_hung_up_terminal())
                continue
            signal.signal(s, signal.SIG_IGN if s == signal.SIGUSR1 else h)

    def on_finish(self, state: LoopState, status: Status) -> None:
        if status == "preempted":
            self.message(
                f"stopped by {self.signal} at step {state.step}; checkpoint saved "
                f"to {state.saved}; resume with: "
                f"{resume_command(self.run_dir, self.world_size)}"
            )
