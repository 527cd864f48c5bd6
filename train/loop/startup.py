"""A run's start, before the first step: every check that must pass before the run folder is
touched (config, data, batch split per phase, memory fit, lm-eval tasks, the folder's lock,
the checkpoint to resume), then the engine, then the folder's start-up files.

Order of work, so that bad input never touches the run folder: check the config, the data
(vocab, tokenizer), every batch phase's split, the memory fit and, for ``--resume``, the saved
config; only then create the folder, build the engine and train.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cgpt.model import GPT
from cgpt.model.errors import CgptError
from cgpt.train.checkpoints.resume import ResumePoint, ResumeRequest, find_resume_point
from cgpt.train.checkpoints.rewind import apply_start, recover_interrupted
from cgpt.train.config import RUN_CONFIG, Provenance, RunConfig, tokenizer_of
from cgpt.train.data.mixture import open_data
from cgpt.train.data.tokenizer import load_tokenizer
from cgpt.train.distributed import (
    DistInfo,
    all_sum,
    barrier,
    init_distributed,
    resolve_device,
)
from cgpt.train.eval.inloop import check_tasks
from cgpt.train.lock import FolderLock
from cgpt.train.loop.engine import (
    build_ds_config,
    build_optimizer,
    check_precision,
    initialize_engine,
    save_ds_config,
)
from cgpt.train.loop.guard import StepGuard, guard_optimizer
from cgpt.train.loop.init_from import check_data_vocab, load_init
from cgpt.train.plan.batch import BatchSplit, split_batch
from cgpt.train.plan.memory import estimate_memory, fmt_bytes
from cgpt.train.provenance import provenance


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


def build_engine(run: Run):
    """The model (seeded; the init source's weights for a continued run), its optimizer with
    the step guard, and the DeepSpeed engine; returns (engine, optimizer, DeepSpeed config)."""
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
    run.guard = guard_optimizer(optimizer)
    return engine, optimizer, ds


def _publish_start(run: Run, ds_config: dict) -> list[str]:
    """Rank 0, once every check passed and the engine (and checkpoint) loaded: the run
    folder's config, DeepSpeed config, rewind bookkeeping and metrics truncation."""
    cfg = run.cfg
    cfg.provenance = Provenance(**provenance())
    save_ds_config(ds_config, run.run_dir / "ds_config.json")
    # config.yaml, a rewind's moves, changes.jsonl, data.json and the metrics cut: one
    # transaction that a kill cannot leave half done (cgpt.train.checkpoints.rewind)
    return apply_start(run.run_dir, run.point, cfg)


def publish_start(run: Run, ds_config: dict) -> list[str]:
    """Every rank: rank 0 writes the start-up files (:func:`_publish_start`); a write that
    fails stops every rank, and a fresh run's folder keeps no trace of it. Returns rank 0's
    notes for the console (rewind moves, accepted changes)."""
    failed, notes, fresh = None, [], not (run.run_dir / RUN_CONFIG).exists()
    if run.dist.is_main:
        try:
            notes = _publish_start(run, ds_config)
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
    return notes
