"""A plan on a cluster: the batch split over the GPUs, the memory per GPU (the lowest ZeRO
stage that fits) and the wall-clock time at an assumed MFU.
"""

from __future__ import annotations

from cgpt.model.errors import CgptError
from cgpt.train.cli_args import check_positive
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.devices import Device
from cgpt.train.plan.memory import fit_micro_batch
from cgpt.train.plan.result import Cluster, Plan


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
) -> Plan:
    """Add the batch split, memory per GPU and time on `gpus` data-parallel `device`s.
    zero_stage None: the lowest of 1, 2, 3 that fits."""
    check_positive(gpus, "the GPU count", integer=True)
    check_mfu(mfu)
    batches = [p.global_batch_seqs for p in plan.phases()]
    for gb in batches:  # a split error names the nearest feasible choices, whatever the stage
        split_batch(gb, gpus, micro_batch or 1)
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


def time_on(plan: Plan, gpus: int, device: Device, mfu: float = 0.4) -> tuple[float, float]:
    """(wall-clock hours, GPU-hours) at `mfu` without a memory fit."""
    check_mfu(mfu)
    hours = plan.train_flops_mfu / (gpus * device.bf16_flops * mfu) / 3600
    return hours, hours * gpus
