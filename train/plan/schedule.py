"""The learning-rate schedule and batch schedule of a plan (pure functions).

Linear warmup to the peak LR, then linear or cosine decay to 10% of it (docs/REFERENCE.md,
Training recipe), or warmup-stable-decay (``decay: wsd``; Hägele et al. 2024, arXiv
2405.18392); the 13B run's batch growth is carried as phases (docs/REFERENCE.md, The 13B
batch change; cgpt.train.config.BatchPhase). The WSD choices: docs/DESIGN-NOTES.md,
plan/schedule.
"""

from __future__ import annotations

import math

from cgpt.train.config import BatchPhase, PlanSection


def cooldown_steps(phase: BatchPhase) -> int:
    """Length of a wsd phase's linear cooldown (0 for linear/cosine phases)."""
    if phase.decay != "wsd" or phase.decay_steps <= 0:
        return 0
    total = phase.warmup_steps + phase.decay_steps
    n = round((phase.cooldown_fraction or 0.0) * total)
    return min(phase.decay_steps, max(1, n))


def lr_in_phase(phase: BatchPhase, counter: int, lr: float, min_lr: float) -> float:
    """LR at schedule counter `counter` (0-based step index) of one phase."""
    if phase.warmup_steps and counter < phase.warmup_steps:
        return lr * (counter + 1) / phase.warmup_steps  # reaches the peak at the last warmup step
    if phase.decay_steps <= 0:
        return lr
    if phase.decay == "wsd":
        n = cooldown_steps(phase)
        start = phase.warmup_steps + phase.decay_steps - n  # first cooldown counter
        if counter < start:
            return lr  # stable
        frac = min(1.0, (counter - start + 1) / n)  # min_lr at the last step, like linear
        return lr - (lr - min_lr) * frac
    frac = min(1.0, (counter - phase.warmup_steps + 1) / phase.decay_steps)
    if phase.decay == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr - (lr - min_lr) * frac


def phase_at(plan: PlanSection, step: int) -> tuple[int, BatchPhase, int]:
    """(phase index, phase, step index inside the phase) for global optimizer step `step`."""
    start = 0
    phases = plan.phases()
    for i, ph in enumerate(phases):
        if step < start + ph.steps:
            return i, ph, step - start
        start += ph.steps
    return len(phases) - 1, phases[-1], step - (start - phases[-1].steps)


def lr_at(plan: PlanSection, step: int) -> float:
    """Peak-relative LR for 0-based optimizer step `step` (multiply by group lr_scale)."""
    _, ph, i = phase_at(plan, step)
    return lr_in_phase(ph, ph.schedule_start_step + i, plan.lr, plan.min_lr)


def global_batch_at(plan: PlanSection, step: int) -> int:
    """Global batch in sequences at optimizer step `step`."""
    return phase_at(plan, step)[1].global_batch_seqs


def tokens_before(plan: PlanSection, step: int) -> int:
    """Tokens consumed by steps [0, step)."""
    total, start = 0, 0
    for ph in plan.phases():
        n = max(0, min(step - start, ph.steps))
        total += n * ph.global_batch_seqs * plan.seq_len
        start += ph.steps
    return total
