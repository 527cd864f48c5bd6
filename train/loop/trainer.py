"""Train a GPT with DeepSpeed from a run config: ``train(cfg, resume=False) -> summary``.

The step loop: per step the plan's LR for every param group (× its μP ``lr_scale``), this
rank's micro-batches of the global stream with explicit accumulation boundaries, and the loss
all-reduced before the update, so a non-finite loss stops every rank before it reaches
weights or checkpoints. Checks and engine: cgpt.train.loop.startup; periodic work (metrics,
eval, checkpoints, watchdog, stop requests): cgpt.train.loop.components, called through
cgpt.train.loop.hooks. Structure: docs/DESIGN-NOTES.md, loop/trainer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cgpt.model import flops_per_token_mfu
from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import universal
from cgpt.train.checkpoints.resume import ResumeRequest, resume_command
from cgpt.train.config import RunConfig, with_absolute_paths
from cgpt.train.data.mixture import MixtureLoader, ValSets
from cgpt.train.distributed import (
    all_sum,
    barrier,
    is_peer_gone,
    is_timeout,
    peer_gone_error,
    timeout_message,
)
from cgpt.train.exit_codes import CollectiveTimeout, Diverged
from cgpt.train.loop.components import (
    CheckpointHook,
    EvalHook,
    MetricsHook,
    StopRequests,
    WatchdogHook,
)
from cgpt.train.loop.finish import (
    banner,
    completed_summary,
    export_final,
    finish,
    write_failed_message,
)
from cgpt.train.loop.hooks import LoopHook, LoopState, Status, StepStats
from cgpt.train.loop.init_from import step0_check
from cgpt.train.loop.startup import Run, build_engine, prepare_run, publish_start
from cgpt.train.loop.watchdog import StepWatchdog
from cgpt.train.metrics import MetricsLogger, Throughput
from cgpt.train.plan.devices import detect_peak_flops
from cgpt.train.plan.schedule import global_batch_at, lr_at, tokens_before
from cgpt.train.write_errors import WriteFailed


def _grad_norm(engine) -> float | None:
    ps = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in ps]))) if ps else None


def _train_step(
    run: Run, engine, optimizer, loader, step: int, stopping: bool = False
) -> tuple[float, float | None, bool]:
    """One optimizer step; returns (global mean loss, grad norm, whether any rank was asked
    to stop). The stop flags ride on the loss all-reduce: one collective per step. A step
    whose gradients are not finite is not applied (cgpt.train.loop.guard); the grad norm is
    then NaN."""
    cfg, dev = run.cfg, run.dist.device
    G = global_batch_at(cfg.plan, step)
    if engine.train_batch_size() != G:  # a new batch phase: same micro-batch, new accumulation
        engine.set_train_batch_size(G)
    lr = lr_at(cfg.plan, step)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    micro = loader.next_step(G, cfg.runtime.micro_batch)
    acc, norm = torch.zeros((), dtype=torch.float64, device=dev), None
    for i, (x, y) in enumerate(micro):
        last = i == len(micro) - 1
        engine.set_gradient_accumulation_boundary(last)
        loss = engine(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
        acc += loss.detach().double()
        if last:  # every rank sees the same global loss before the update
            s, n, stops = all_sum([acc.item(), len(micro), float(stopping)], dev)
            mean = s / n
            if not math.isfinite(mean):
                return mean, None, stops > 0
        engine.backward(loss)
        if last and cfg.runtime.zero_stage == 0 and cfg.runtime.precision == "fp32":
            norm = _grad_norm(engine)  # DeepSpeed does not report it for a plain optimizer
        engine.step()
    gn = engine.get_global_grad_norm()
    norm = float(gn) if gn is not None else norm
    if run.guard is not None and run.guard.skipped:
        norm = math.nan
    return mean, norm, stops > 0


def _diverged(run: Run, what: str, step: int, saved: Path | None) -> Diverged:
    """The message after a divergence: a command that rewinds with a lower LR, verbatim."""
    lr = f"{run.cfg.plan.lr / 2:.3g}"
    min_lr = min(run.cfg.plan.min_lr, float(lr))
    change = f" --set plan.lr={lr}" + (
        f" --set plan.min_lr={min_lr:.3g}" if min_lr != run.cfg.plan.min_lr else ""
    )
    keys = "plan.lr" + (",plan.min_lr" if min_lr != run.cfg.plan.min_lr else "")
    if saved:
        where = f"the last good checkpoint is {saved}; nothing was saved after it"
        cmd = resume_command(
            run.run_dir, run.dist.world_size, f" --from {saved.name}{change} --allow-change {keys}"
        )
    else:
        where = "the run had saved no checkpoint yet"
        cmd = resume_command(run.run_dir, run.dist.world_size, f"{change} --allow-change {keys}")
    return Diverged(
        f"{what} at step {step + 1}; {where}. To continue with half the peak LR "
        f"(or choose your own, and plan.warmup_steps likewise): {cmd}"
    )


class StepLoop:
    """The optimizer steps of one run; the periodic work is in ``hooks``, called in order."""

    def __init__(self, run: Run, engine, optimizer):
        self.run, self.engine, self.opt = run, engine, optimizer
        cfg, d = run.cfg, run.dist
        self.loader = MixtureLoader(  # data.path: exactly the one-folder TokenLoader
            run.data, cfg.plan.seq_len, d.rank, d.world_size, seed=cfg.runtime.seed
        )
        self.val_sets = ValSets(
            run.data, cfg.plan.seq_len, d.rank, d.world_size, cfg.runtime.eval_batches,
            cfg.runtime.micro_batch, seed=cfg.runtime.seed,
        )  # fmt: skip
        self.checkpoints = CheckpointHook(run, engine, self.loader)
        self.state = LoopState(end=min(cfg.plan.steps, cfg.runtime.max_steps or cfg.plan.steps))
        self.hooks: list[LoopHook] = []  # filled by _start once the console exists
        self.message: Callable[[str], None] = print  # the metrics logger's, from _start on

    def run_steps(self, stop: StopRequests) -> Status:
        cfg, state = self.run.cfg, self.state
        fpt = flops_per_token_mfu(cfg.model, cfg.plan.seq_len)
        tp, avg_dt, skipped = Throughput(fpt, detect_peak_flops()), None, 0
        while state.step < state.end:
            t0 = time.perf_counter()
            loss, norm, state.stopping = _train_step(
                self.run, self.engine, self.opt, self.loader, state.step, stop.signal is not None
            )
            skipped = self._check_finite(loss, norm, skipped)
            lr = lr_at(cfg.plan, state.step)
            state.step += 1
            state.tokens = tokens_before(cfg.plan, state.step)
            state.loss = loss
            tps, mfu = tp.step(state.tokens - tokens_before(cfg.plan, state.step - 1))
            dt = time.perf_counter() - t0
            avg_dt = dt if avg_dt is None else 0.9 * avg_dt + 0.1 * dt
            stats = StepStats(loss, lr, norm, tps, mfu, dt, avg_dt * (state.end - state.step))
            for hook in self.hooks:
                hook.on_step_end(state, stats)
            if state.stopping:  # the checkpoint hook saved this step
                return "preempted"
            tp.reset()
        return "completed" if state.step >= cfg.plan.steps else "stopped"

    def _check_finite(self, loss: float, norm: float | None, skipped: int) -> int:
        """Raise Diverged for a non-finite loss, or for more than runtime.max_skipped_steps
        steps in a row whose gradients were not finite (the guard skipped them); returns the
        count of such steps in a row."""
        state = self.state
        if not math.isfinite(loss):
            raise _diverged(self.run, f"the loss became {loss}", state.step, state.saved)
        if norm is None or math.isfinite(norm):
            return 0
        skipped += 1
        self.message(
            f"step {state.step + 1}: gradients not finite; the step was "
            f"skipped ({skipped} in a row)"
        )
        if skipped > self.run.cfg.runtime.max_skipped_steps:
            raise _diverged(
                self.run,
                f"{skipped} steps in a row had non-finite gradients",
                state.step,
                state.saved,
            )
        return skipped

    def finish(self, status: Status) -> None:
        for hook in self.hooks:
            hook.on_finish(self.state, status)

    def close(self) -> None:
        for hook in reversed(self.hooks):
            hook.close()


def _start(run: Run, loop: StepLoop, ds_config: dict) -> StopRequests:
    """From a built engine to the first step: restore the checkpoint (or check a fresh
    continued run's step-0 loss), write the start-up files, open the console and metrics,
    print the notes and banner, start the watchdog; the hooks in their calling order."""
    cfg, notes, step0 = run.cfg, [], None
    if run.resume_from is not None:
        notes.append(loop.checkpoints.restore(loop.state))
    elif cfg.init is not None:  # a fresh continued run: the loaded model's step-0 loss
        step0 = step0_check(run, loop.engine, loop.loader)
    for w in run.point.warnings:
        notes.insert(0, w)
    notes += publish_start(run, ds_config)
    log = MetricsLogger(
        run.run_dir,
        run.dist.is_main,
        min(cfg.plan.steps, cfg.runtime.max_steps or 10**18),
        run.resume_state.get("step", 0),
        cfg.runtime.wandb,
        cfg.runtime.wandb_project,
        cfg.to_dict(),
        cfg.runtime.log_every,
    )
    loop.hooks.append(MetricsHook(log))  # from here on a failure closes the logger
    loop.message = log.message
    for note in notes:
        log.message(note)
    log.message(banner(run, loop.state.step))
    if step0 is not None:
        log.log(step0)
    watchdog = StepWatchdog(
        cfg.runtime.watchdog_factor, log.message, timeout_s=cfg.runtime.collective_timeout_s
    ).start()
    stop = StopRequests(run.run_dir, run.dist.world_size, log.message)
    evaluator = EvalHook(run, loop.engine, loop.loader, loop.val_sets, log, watchdog.beat)
    loop.hooks += [evaluator, loop.checkpoints, WatchdogHook(watchdog), stop]
    return stop


def _collective_error(run: Run, state: LoopState | None, e: RuntimeError) -> CgptError | None:
    """A collective that timed out or lost a peer, as one line with what is saved; None for
    any other error."""
    step = state.step if state is not None else 0
    saved = state.saved if state is not None else None
    if is_timeout(e):
        return CollectiveTimeout(timeout_message(run.cfg.runtime.collective_timeout_s, step, saved))
    if is_peer_gone(e):  # another rank's process died: one line, not gloo's traceback
        return peer_gone_error(e, step, saved, resume_command(run.run_dir, run.dist.world_size))
    return None


def train(cfg: RunConfig, resume: bool | ResumeRequest = False) -> dict:
    """Train (or continue, with ``resume``) the run described by ``cfg``; returns a summary:
    run_dir, status (completed | stopped at runtime.max_steps | preempted), steps, tokens,
    loss (last train loss), val_loss (last), checkpoint, wall_s, cgpt (version).

    Nothing in the run folder is written before every check passed: config, data, batch
    split, memory, the lock, the checkpoint to resume (read back whole) and loading it.
    """
    t0 = time.time()
    req = resume if isinstance(resume, ResumeRequest) else ResumeRequest(resume=bool(resume))
    cfg = with_absolute_paths(cfg)  # the run folder records where its data is
    run = prepare_run(cfg, req)
    loop: StepLoop | None = None
    try:
        done = completed_summary(run)
        if done is not None:
            if run.dist.is_main:
                print(f"{run.run_dir} already completed at step {done['steps']}; nothing to do")
            return done
        barrier()
        if run.point.universal:  # rank 0 converts (once), the others wait
            assert run.resume_from is not None  # universal is set only for a checkpoint
            universal.ensure_universal(run.resume_from, run.dist.rank, run.dist.device)
        engine, optimizer, ds = build_engine(run)
        loop = StepLoop(run, engine, optimizer)
        with _start(run, loop, ds) as stop:
            status = loop.run_steps(stop)
            loop.finish(status)  # the last eval and save, or the preempted run's message
            if status == "preempted":
                return finish(run, loop.state, loop.loader, status, t0)
        export_final(run, engine)
        return finish(run, loop.state, loop.loader, status, t0)
    except WriteFailed as e:  # disk full or read-only outside a checkpoint save
        state = loop.state if loop is not None else None
        raise CgptError(write_failed_message(run, state, e)) from None
    except RuntimeError as e:
        error = _collective_error(run, loop.state if loop is not None else None, e)
        if error is None:
            raise
        raise error from e
    finally:
        if loop is not None:
            loop.close()
        if run.lock is not None:
            run.lock.release(cleanup_if_unused=True)
