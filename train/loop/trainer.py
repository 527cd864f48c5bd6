"""Train a GPT with DeepSpeed from a run config: ``train(cfg, resume=False) -> summary``.

The same code runs as a plain `cgpt train RUN.yaml` (a one-process group on CPU/gloo or one
GPU) and under `deepspeed --num_gpus N` / `torchrun` (one process per rank).
Order of work, so that bad input never touches the run folder: check the config, the data
(vocab, tokenizer), every batch phase's split, the memory fit and, for ``--resume``, the saved
config; only then create the folder, build the engine and train.

Per step: LR of every param group from the plan (× the group's μP ``lr_scale``); this rank's
micro-batches from the loader's global stream; explicit accumulation boundaries (so the
13B-style batch switch only changes DeepSpeed's accumulation count through
``engine.set_train_batch_size``); the loss all-reduced over ranks before the update, so a
non-finite loss stops every rank before it can reach weights or checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cgpt.model import GPT, flops_per_token_mfu
from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints import universal
from cgpt.train.checkpoints.resume import (
    ResumePoint,
    ResumeRequest,
    find_resume_point,
    resume_command,
)
from cgpt.train.checkpoints.rewind import apply_start, recover_interrupted
from cgpt.train.config import (
    RUN_CONFIG,
    Provenance,
    RunConfig,
    tokenizer_of,
    with_absolute_paths,
)
from cgpt.train.data.mixture import MixtureLoader, ValSets, open_data
from cgpt.train.data.tokenizer import load_tokenizer
from cgpt.train.eval.inloop import check_tasks, evaluate_tasks
from cgpt.train.exit_codes import CollectiveTimeout, Diverged
from cgpt.train.lock import FolderLock
from cgpt.train.loop.distributed import (
    DistInfo,
    all_sum,
    barrier,
    init_distributed,
    is_peer_gone,
    is_timeout,
    peer_gone_error,
    resolve_device,
    timeout_message,
)
from cgpt.train.loop.engine import (
    build_ds_config,
    build_optimizer,
    check_precision,
    initialize_engine,
    save_ds_config,
)
from cgpt.train.loop.finish import (
    banner,
    completed_summary,
    export_final,
    finish,
    write_failed_message,
)
from cgpt.train.loop.guard import StepGuard, guard_optimizer
from cgpt.train.loop.init_from import check_data_vocab, load_init, step0_check
from cgpt.train.loop.metrics import (
    MetricsLogger,
    Throughput,
    eta_text,
)
from cgpt.train.loop.watchdog import StepWatchdog
from cgpt.train.plan.batch import BatchSplit, split_batch
from cgpt.train.plan.devices import detect_peak_flops
from cgpt.train.plan.memory import estimate_memory, fmt_bytes
from cgpt.train.plan.schedule import global_batch_at, lr_at, tokens_before
from cgpt.train.provenance import provenance
from cgpt.train.write_errors import WriteFailed


@dataclass
class Run:
    """Everything checked before the run folder is touched."""

    cfg: RunConfig
    dist: DistInfo
    data: object  # cgpt.train.data.shards.TokenData
    splits: dict[int, BatchSplit]  # global batch -> split, for every phase
    run_dir: Path
    point: ResumePoint = field(default_factory=ResumePoint)
    tokenizer_dir: str | None = None
    lock: FolderLock | None = None  # rank 0 holds the run folder for the whole run
    guard: StepGuard | None = None  # set when the engine is built

    @property
    def resume_from(self) -> Path | None:
        return self.point.folder

    @property
    def resume_state(self) -> dict:
        return self.point.state


# ---------------------------------------------------------------------------- checks
def _check_data(cfg: RunConfig):
    # one process per node reads every byte for the sha256 check; the others check sizes (a
    # failure there exits that rank, and the launcher then stops the rest)
    local_main = os.environ.get("LOCAL_RANK", "0") == "0"
    tokenizer = None
    if cfg.data.tokenizer:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    if cfg.init is not None:  # the source's vocab against the data's: the fix is a prepare
        check_data_vocab(cfg)
    # every folder of data.path / data.sources / data.val: one tokenizer, the model's vocab
    verify = True if local_main else "size"
    return open_data(cfg.data, cfg.model.vocab_size, verify, tokenizer)


def _check_memory(cfg: RunConfig, dist: DistInfo) -> None:
    """Refuse a plan whose estimated per-rank peak exceeds the device (or host) memory."""
    rt = cfg.runtime
    est = estimate_memory(
        cfg.model,
        cfg.plan.seq_len,
        rt.micro_batch,
        rt.zero_stage,
        dist.world_size,
        rt.activation_checkpointing,
        rt.precision,
    ).total
    if dist.device.type == "cuda":
        have, where = torch.cuda.get_device_properties(dist.device).total_memory, "GPU"
    else:
        import psutil

        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        have, where = psutil.virtual_memory().total // ranks_here, "host (per rank)"
    if est > have:
        raise CgptError(
            f"the plan needs about {fmt_bytes(est)} per rank but the {where} memory "
            f"is {fmt_bytes(have)}; lower runtime.micro_batch, set "
            "runtime.activation_checkpointing=true, raise runtime.zero_stage or "
            "use more GPUs"
        )


def _check_eval_tasks(cfg: RunConfig, dist: DistInfo) -> None:
    """runtime.eval_tasks: lm-eval present, tasks known, datasets reachable (rank 0 asks)."""
    rt, error = cfg.runtime, None
    if not rt.eval_tasks:
        return
    if dist.is_main:
        try:
            check_tasks(rt.eval_tasks, rt.eval_include_path, tokenizer_of(cfg.data))
        except CgptError as e:
            error = e
    if all_sum([float(error is not None)], dist.device)[0]:
        raise error or CgptError("rank 0 refused runtime.eval_tasks")


def _lock_run_dir(run: Run) -> None:
    """Rank 0 takes the run folder's lock; every rank learns whether it got it."""
    error = None
    if run.dist.is_main:
        try:
            run.lock = FolderLock(run.run_dir).acquire()
        except CgptError as e:
            error = e
    if all_sum([float(error is not None)], run.dist.device)[0]:
        raise error or CgptError("rank 0 could not lock the run folder")


def prepare_run(cfg: RunConfig, req: ResumeRequest) -> Run:
    """All checks; joins the process group and locks the run folder but writes nothing
    else. On failure the lock is released (and a folder it created removed)."""
    rt = cfg.runtime
    device = resolve_device(rt.device)
    check_precision(rt.precision, device, rt.zero_stage)
    data = _check_data(cfg)
    dist = init_distributed(device, rt.collective_timeout_s)
    splits = {}
    for ph in cfg.plan.phases():
        splits[ph.global_batch_seqs] = split_batch(
            ph.global_batch_seqs, dist.world_size, rt.micro_batch
        )
    _check_memory(cfg, dist)
    _check_eval_tasks(cfg, dist)
    run = Run(cfg, dist, data, splits, Path(rt.out_dir), tokenizer_dir=tokenizer_of(cfg.data))
    _lock_run_dir(run)
    try:  # first a rewind that a kill interrupted is finished or undone (rank 0)
        notes = recover_interrupted(run.run_dir, dist) if req.resume else []
        run.point = find_resume_point(
            run.run_dir, cfg.to_dict(), req, dist.world_size, rt.zero_stage
        )
        run.point.warnings[:0] = notes
    except BaseException:
        if run.lock:
            run.lock.release(cleanup_if_unused=True)
        raise
    return run


# ---------------------------------------------------------------------------- building
def _seed_everything(seed: int) -> None:
    """Same seed on every rank: identical model init whatever the data-parallel size."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _build_engine(run: Run):
    cfg, dev = run.cfg, run.dist.device.type
    _seed_everything(cfg.runtime.seed)
    model = GPT(cfg.model)
    if cfg.init is not None:  # continued pretraining: the source's weights, before DeepSpeed
        load_init(run, model)
    model.gradient_checkpointing = cfg.runtime.activation_checkpointing
    optimizer = build_optimizer(model, cfg, dev)
    first = run.splits[cfg.plan.phases()[0].global_batch_seqs]
    ds = build_ds_config(cfg, first)
    engine = initialize_engine(model, optimizer, ds, run.dist.world_size)
    if cfg.runtime.compile:
        engine.compile()
    return engine, optimizer, ds


# ---------------------------------------------------------------------------- the loop
class _StopFlag:
    """SIGTERM, SIGINT and SIGUSR1 set a flag; every rank saves the same step at the next
    step boundary (the flags ride on the loss all-reduce) and the run exits PREEMPTED.

    SIGUSR1 is the stop that launchers let through: `cgpt launch` and the sbatch script
    start the launcher with SIGUSR1 ignored, so deepspeed's and torchrun's launchers (which
    kill their workers on SIGTERM/SIGINT) inherit SIG_IGN and survive it, and only the
    ranks, whose handler replaces the inherited disposition here, act on it. Once the loop
    is over a late SIGUSR1 is ignored (the run is finishing anyway)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no preemption handling
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, exc_type, *exc):
        for s, h in self._old.items():
            if s == signal.SIGTERM and exc_type is not None:
                # the run is failing (e.g. a dead peer): a launcher SIGTERMs the remaining
                # ranks as soon as one exits, which must not cut this rank's one-line report
                # short; the entry point restores SIGTERM once the report is out
                continue
            signal.signal(s, signal.SIG_IGN if s == signal.SIGUSR1 else h)


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


@torch.no_grad()
def evaluate(engine, batches, dev) -> float:
    """Mean loss over the fixed val batches of all ranks."""
    engine.eval()
    s, n = 0.0, 0
    for x, y in batches:
        loss = engine(x.to(dev), y.to(dev))
        s, n = s + loss.float().item() * x.size(0), n + x.size(0)
    engine.train()
    s, n = all_sum([s, n], dev)
    return s / max(n, 1)


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


class _Loop:
    def __init__(self, run: Run, engine, optimizer, log: MetricsLogger | None = None):
        self.run, self.engine, self.opt, self.log = run, engine, optimizer, log
        self.notes: list[str] = []  # messages from before the logger existed
        cfg, d = run.cfg, run.dist
        self.loader = MixtureLoader(  # data.path: exactly the one-folder TokenLoader
            run.data, cfg.plan.seq_len, d.rank, d.world_size, seed=cfg.runtime.seed
        )
        self.val_sets = ValSets(
            run.data, cfg.plan.seq_len, d.rank, d.world_size, cfg.runtime.eval_batches,
            cfg.runtime.micro_batch, seed=cfg.runtime.seed,
        )  # fmt: skip
        self.val_batches = self.val_sets.first
        self.ckpt = ckpt.Checkpointer(run.run_dir, cfg.runtime.keep_last, d.rank)
        self.step, self.tokens, self.saved_step = 0, 0, -1
        self.saved: Path | None = None
        self.loss: float | None = None
        self.val_loss: float | None = None
        self.eval_step = -1
        self.end = min(cfg.plan.steps, cfg.runtime.max_steps or cfg.plan.steps)
        self.watchdog: StepWatchdog | None = None  # started with the loop (needs the logger)

    def restore(self) -> None:
        load_weights = None
        if self.run.point.universal:  # another world size or ZeRO stage: converted already
            converted = universal.published(self.run.resume_from)
            if converted is not None:
                load_weights = functools.partial(universal.load, universal=converted)
        st = self.ckpt.load(self.engine, self.run.resume_from, load_weights)
        self.loader.load_state_dict(st["loader"])
        self.step, self.tokens = int(st["step"]), int(st["tokens"])
        self.loss, self.val_loss = st.get("loss"), st.get("val_loss")
        self.eval_step = int(st.get("eval_step", -1))
        self.saved, self.saved_step = self.run.resume_from, self.step
        self.notes.append(
            f"resumed from {self.run.resume_from} (step {self.step}, {self.tokens:,} tokens)"
        )

    def save(self) -> None:
        if self.saved_step == self.step:
            return
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "loader": self.loader.state_dict(),
            "world_size": self.run.dist.world_size,
            "zero_stage": self.run.cfg.runtime.zero_stage,
            "loss": self.loss,
            "val_loss": self.val_loss,
            "eval_step": self.eval_step,
            "time": time.time(),
        }
        self.saved = self.ckpt.save(self.engine, self.step, state, self.run.cfg)
        self.saved_step = self.step

    def eval(self) -> None:
        dev = self.run.dist.device
        row = self.val_sets.evaluate(lambda batches: evaluate(self.engine, batches, dev))
        self.val_loss = row["val_loss"]
        self.eval_step = self.step
        data = self.loader.stats() if self.val_sets.mix.explicit else {}
        rt, tasks = self.run.cfg.runtime, {}
        if rt.eval_tasks:  # rank 0 runs lm-eval; the others wait in the next collective
            t0 = time.perf_counter()
            tasks = evaluate_tasks(
                self.engine, rt, self.run.tokenizer_dir, self.run.dist.is_main, rt.zero_stage, dev
            )
            if tasks:
                tasks["eval/time_s"] = time.perf_counter() - t0
            if self.watchdog is not None:
                self.watchdog.beat(self.step)
        assert self.log is not None  # train() gives the loop its logger before any eval
        self.log.log({"step": self.step, "tokens": self.tokens, **row, **data, **tasks})

    def run_steps(self, stop: _StopFlag) -> str:
        cfg, rt, log = self.run.cfg, self.run.cfg.runtime, self.log
        assert log is not None  # train() gives the loop its logger before the steps
        fpt = flops_per_token_mfu(cfg.model, cfg.plan.seq_len)
        tp, avg_dt, skipped_in_a_row, ran = Throughput(fpt, detect_peak_flops()), None, 0, 0
        while self.step < self.end:
            t0 = time.perf_counter()
            loss, norm, stopping = _train_step(
                self.run, self.engine, self.opt, self.loader, self.step, stop.signal is not None
            )
            if not math.isfinite(loss):
                raise _diverged(self.run, f"the loss became {loss}", self.step, self.saved)
            if norm is not None and not math.isfinite(norm):  # the guard skipped this step
                skipped_in_a_row += 1
                log.message(
                    f"step {self.step + 1}: gradients not finite; the step was "
                    f"skipped ({skipped_in_a_row} in a row)"
                )
                if skipped_in_a_row > rt.max_skipped_steps:
                    raise _diverged(
                        self.run,
                        f"{skipped_in_a_row} steps in a row had non-finite gradients",
                        self.step,
                        self.saved,
                    )
            else:
                skipped_in_a_row = 0
            lr = lr_at(cfg.plan, self.step)
            self.step += 1
            self.tokens = tokens_before(cfg.plan, self.step)
            self.loss = loss
            tps, mfu = tp.step(self.tokens - tokens_before(cfg.plan, self.step - 1))
            dt = time.perf_counter() - t0
            avg_dt = dt if avg_dt is None else 0.9 * avg_dt + 0.1 * dt
            log.log(
                {
                    "step": self.step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "tokens": self.tokens,
                    "tokens_per_s": tps,
                    "mfu": mfu,
                    "step_time_s": dt,
                    "eta_s": avg_dt * (self.end - self.step),
                }
            )
            ran += 1
            if ran == 2 and self.step < self.end:  # the first step warms up: time the second
                log.message(
                    f"ETA {eta_text(dt * (self.end - self.step))} for {self.end - self.step} more "
                    f"steps ({dt:.3g} s/step)"
                )
            if rt.eval_every and self.step % rt.eval_every == 0:
                self.eval()
            if (rt.save_every and self.step % rt.save_every == 0) or self.step in rt.save_steps:
                self.save()
            if stopping:  # a signal seen by any rank before this step's loss all-reduce
                self.save()
                return "preempted"
            tp.reset()
            if self.watchdog is not None:
                self.watchdog.beat(self.step)
        return "completed" if self.step >= cfg.plan.steps else "stopped"


def _publish_start(run: Run, ds_config: dict) -> list[str]:
    """Rank 0, once every check passed and the engine (and checkpoint) loaded: the run
    folder's config, DeepSpeed config, rewind bookkeeping and metrics truncation."""
    cfg = run.cfg
    cfg.provenance = Provenance(**provenance())
    save_ds_config(ds_config, run.run_dir / "ds_config.json")
    # config.yaml, a rewind's moves, changes.jsonl, data.json and the metrics cut: one
    # transaction that a kill cannot leave half done (cgpt.train.checkpoints.rewind)
    return apply_start(run.run_dir, run.point, cfg)


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
    main, log, loop = run.dist.is_main, None, None
    try:
        done = completed_summary(run)
        if done is not None:
            if main:
                print(f"{run.run_dir} already completed at step {done['steps']}; nothing to do")
            return done
        barrier()
        if run.point.universal:  # rank 0 converts (once), the others wait
            universal.ensure_universal(run.resume_from, run.dist.rank, run.dist.device)
        engine, optimizer, ds = _build_engine(run)
        run.guard = guard_optimizer(optimizer)
        loop = _Loop(run, engine, optimizer)
        step0 = None
        if run.resume_from is not None:
            loop.restore()
        elif cfg.init is not None:  # a fresh continued run: the loaded model's step-0 loss
            step0 = step0_check(run, engine, loop.loader)
        for w in run.point.warnings:
            loop.notes.insert(0, w)
        failed, fresh = None, not (run.run_dir / RUN_CONFIG).exists()
        if main:
            try:
                loop.notes += _publish_start(run, ds)
            except OSError as e:
                failed = CgptError(
                    f"cannot write into the run folder {run.run_dir}: "
                    f"{e.strerror or e}; nothing was trained"
                )
                if fresh:
                    for name in (RUN_CONFIG, "ds_config.json"):  # a fresh run leaves no trace
                        (run.run_dir / name).unlink(missing_ok=True)
        if all_sum([float(failed is not None)], run.dist.device)[0]:
            raise failed or CgptError("rank 0 could not write into the run folder")
        barrier()
        log = MetricsLogger(
            run.run_dir,
            main,
            min(cfg.plan.steps, cfg.runtime.max_steps or 10**18),
            run.resume_state.get("step", 0),
            cfg.runtime.wandb,
            cfg.runtime.wandb_project,
            cfg.to_dict(),
            cfg.runtime.log_every,
        )
        loop.log = log
        for note in loop.notes:
            log.message(note)
        log.message(banner(run, loop.step))
        if step0 is not None:
            log.log(step0)
        loop.watchdog = StepWatchdog(
            cfg.runtime.watchdog_factor, log.message, timeout_s=cfg.runtime.collective_timeout_s
        ).start()
        with _StopFlag() as stop:
            status = loop.run_steps(stop)
            if status == "preempted":
                log.message(
                    f"stopped by {stop.signal} at step {loop.step}; checkpoint saved "
                    f"to {loop.saved}; resume with: "
                    f"{resume_command(run.run_dir, run.dist.world_size)}"
                )
                return finish(run, loop, status, t0)
            if loop.eval_step != loop.step:
                loop.eval()
            loop.save()
        export_final(run, engine)
        return finish(run, loop, status, t0)
    except WriteFailed as e:  # disk full or read-only outside a checkpoint save
        raise CgptError(write_failed_message(run, loop, e)) from None
    except RuntimeError as e:
        step = loop.step if loop is not None else 0
        saved = loop.saved if loop is not None else None
        if is_timeout(e):
            raise CollectiveTimeout(
                timeout_message(cfg.runtime.collective_timeout_s, step, saved)
            ) from e
        if is_peer_gone(e):  # another rank's process died: one line, not gloo's traceback
            resume = resume_command(run.run_dir, run.dist.world_size)
            raise peer_gone_error(e, step, saved, resume) from e
        raise
    finally:
        if loop is not None and loop.watchdog is not None:
            loop.watchdog.close()
        if log is not None:
            log.close()
        if run.lock is not None:
            run.lock.release(cleanup_if_unused=True)
