"""A plan on a cluster: the batch split over the GPUs, the memory per GPU (the lowest ZeRO
stage that fits) and the wall-clock time at an assumed MFU.
"""

from __future__ import annotations

import math
from dataclasses import replace

import psutil

from cgpt.model.errors import CgptError
from cgpt.train.checks import FieldError, check_positive
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.devices import Device
from cgpt.train.plan.memory import estimate_memory, fit_micro_batch, fmt_bytes
from cgpt.train.plan.result import Cluster, LocalFit, Plan


def check_mfu(mfu: float) -> None:
    if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        raise CgptError(f"MFU must be a fraction in (0, 1], got {mfu!r}")


def with_cluster(
    plan: Plan,
    gpus: int,
    device: Device,
    zero_stage: int | None = None,
    mfu: float = 0.4,
    micro_batch: int | None = None,
    activation_checkpointing: bool | None = None,
    per_node: int | None = None,
) -> Plan:
    """Add the batch split, memory per GPU and time on `gpus` data-parallel `device`s.
    zero_stage None: the lowest of 1, 2, 3 that fits. ``per_node``: GPUs per node when the
    count was given as --nodes × --gpus-per-node (advice then names --nodes)."""
    check_positive(gpus, "the GPU count", integer=True)
    check_mfu(mfu)
    batches = [p.global_batch_seqs for p in plan.phases()]
    check_split(plan, gpus, micro_batch, per_node)  # advice in flags that work, every phase
    stages = [zero_stage] if zero_stage is not None else [1, 2, 3]
    for stage in stages:
        try:
            fitted = fit_micro_batch(
                plan.model,
                plan.seq_len,
                batches,
                gpus,
                device,
                stage,
                activation_checkpointing,
                micro_batch,
                per_node=per_node,
            )
            break
        except CgptError:
            if stage == stages[-1]:
                raise
    hours = plan.train_flops_mfu / (gpus * device.bf16_flops * mfu) / 3600
    cluster = Cluster(
        gpus=gpus,
        device=device,
        zero_stage=fitted.memory.zero_stage,
        mfu=mfu,
        micro_batch=fitted.micro_batch,
        grad_accum=tuple(s.grad_accum for s in fitted.splits),
        activation_checkpointing=fitted.memory.activation_checkpointing,
        memory=fitted.memory,
        hours=hours,
        gpu_hours=hours * gpus,
    )
    return plan.replace(cluster=cluster)


def on_this_machine(
    plan: Plan,
    device: Device | None = None,
    micro_batch: int | None = None,
    memory_bytes: int | None = None,
) -> Plan:
    """A plan without a cluster, for one rank here: the largest micro-batch that divides
    every batch phase and fits one ``device`` (else this machine's RAM, ``memory_bytes`` or
    probed), at the run config's defaults (ZeRO stage 1, no activation checkpointing).
    Recorded in ``plan.local``; a note (and no micro-batch) when none fits."""
    if device is None:
        # the trainer checks a CPU run against the same total
        total = memory_bytes or psutil.virtual_memory().total
        device = Device("this machine's RAM", 0.0, int(total))
    check_split(plan, 1, micro_batch)
    batches = [p.global_batch_seqs for p in plan.phases()]
    try:
        fitted = fit_micro_batch(
            plan.model, plan.seq_len, batches, 1, device, 1, False, micro_batch
        )
    except CgptError:
        need = estimate_memory(plan.model, plan.seq_len, micro_batch or 1, 1, 1, False).total
        note = (
            f"micro-batch {micro_batch or 1}: one rank needs {fmt_bytes(need)}, more than "
            f"{device.name} ({fmt_bytes(device.memory_bytes)}); plan a cluster with --gpu "
            "and --gpus"
        )
        unfit = LocalFit(None, (), need, device.name, device.memory_bytes, micro_batch is None)
        return replace(plan, local=unfit, notes=plan.notes + (note,))
    local = LocalFit(
        micro_batch=fitted.micro_batch,
        grad_accum=tuple(s.grad_accum for s in fitted.splits),
        memory_bytes=fitted.memory.total,
        where=device.name,
        available_bytes=device.memory_bytes,
        chosen=micro_batch is None,
    )
    # dataclasses.replace: the plan's numbers stay as they are (Plan.replace recomputes them)
    return replace(plan, local=local)


def check_split(
    plan: Plan, gpus: int, micro_batch: int | None = None, per_node: int | None = None
) -> None:
    """Refuse a GPU count or micro-batch that a batch phase cannot split, with the flags
    that fix it for every phase: rank counts that divide all of them, or (keeping the ranks)
    a global batch near the plan's, or micro-batches that divide every rank's share."""
    batches = [p.global_batch_seqs for p in plan.phases()]
    common = math.gcd(*batches)
    if common % gpus == 0:
        share = common // gpus
        if micro_batch and share % micro_batch:
            near = sorted(divisors(share), key=lambda b: (abs(b - micro_batch), b))[:3]
            raise FieldError(
                f"micro-batch {micro_batch} does not divide the {share} sequences each of "
                f"{gpus} ranks gets per step in every batch phase; use "
                + " or ".join(f"{{f.micro_batch}} {b}" for b in sorted(near))
            )
        split_batch(batches[0], gpus, micro_batch or 1)
        return
    step = per_node or 1
    ranks = [r for r in divisors(common) if r % step == 0]
    ranks = sorted(sorted(ranks, key=lambda r: (abs(r - gpus), r))[:3])
    fixes = [f"{{f.nodes}} {r // step}" if per_node else f"{{f.gpus}} {r}" for r in ranks]
    what = (
        f"global batch {batches[0]}"
        if len(batches) == 1
        else f"global batches {' and '.join(map(str, batches))} (one per batch phase)"
    )
    lo = batches[0] // gpus * gpus
    rules = "{f.rules} " if plan.source == "published" else ""
    keep = [f"{rules}{{f.batch_seqs}} {b}" for b in (lo, lo + gpus) if b > 0]
    raise FieldError(
        "{name}'s {what} cannot be split over {gpus} data-parallel ranks; use "
        + (" or ".join(fixes) + ", or " if fixes else "")
        + "keep {gpus} ranks with "
        + " or ".join(keep),
        name=plan.name,
        what=what,
        gpus=gpus,
    )


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def time_on(plan: Plan, gpus: int, device: Device, mfu: float = 0.4) -> tuple[float, float]:
    """(wall-clock hours, GPU-hours) at `mfu` without a memory fit."""
    check_mfu(mfu)
    hours = plan.train_flops_mfu / (gpus * device.bf16_flops * mfu) / 3600
    return hours, hours * gpus
