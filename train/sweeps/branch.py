"""One run, many budgets: ``make_branch(STABLE_RUN, k, OUT)`` turns a warmup-stable-decay
run's checkpoint ``step-k`` into the start of a shorter WSD run whose cooldown starts at k,
in its own folder published whole (``cgpt branch``); ``cgpt train OUT --resume`` then
trains only the cooldown and equals a dedicated run of that length bitwise
(docs/SCALING.md, Cooldown branches).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.files import HeldTempDir, fsync_dir, make_public, remove_stale, write_atomic
from cgpt.train.checkpoints import layout as ckpt
from cgpt.train.config import RUN_CONFIG, BatchPhase, PlanSection, RunConfig, load_run_config
from cgpt.train.fits.curves import BRANCH_FILE  # defined beside its reader, the lower layer
from cgpt.train.metrics import read_metrics
from cgpt.train.plan.schedule import cooldown_steps, lr_at


def _phase(plan: PlanSection, steps: int, fraction: float) -> BatchPhase:
    return BatchPhase(
        global_batch_seqs=plan.global_batch_seqs,
        steps=steps,
        warmup_steps=plan.warmup_steps,
        decay_steps=steps - plan.warmup_steps,
        decay="wsd",
        cooldown_fraction=fraction,
    )


def branch_plan(
    plan: PlanSection, step: int, fraction: float, steps: int | None = None
) -> PlanSection:
    """The plan of a WSD run whose cooldown (``fraction`` of its schedule) starts at ``step``
    or, where rounding allows no exact start, at the first step after it. Several lengths
    can round to the same cooldown start; without ``steps`` the shortest is taken, with
    ``steps`` that length (checked: its cooldown must start exactly at ``step``)."""
    if plan.batch_schedule:
        raise CgptError("branches need a one-phase plan (this one has a batch_schedule)")
    if not 0 < fraction < 1:
        raise CgptError(f"--cooldown-fraction must be in (0, 1), got {fraction}")
    if step <= plan.warmup_steps:
        raise CgptError(f"step {step} is inside the warmup ({plan.warmup_steps} steps)")
    if steps is not None:
        start = steps - cooldown_steps(_phase(plan, steps, fraction))
        if start != step:
            raise CgptError(
                f"a {steps}-step run with cooldown fraction {fraction} starts its cooldown at "
                f"step {start}, not {step}"
            )
        total = steps
    else:
        total = step + 1
        while total - cooldown_steps(_phase(plan, total, fraction)) < step:
            total += 1
    old = plan.model_dump()
    scale = total / plan.steps
    return PlanSection(
        **{
            **old,
            "name": f"{plan.name}-branch{step}",
            "steps": total,
            "tokens": total * plan.global_batch_tokens,
            "decay": "wsd",
            "decay_steps": total - plan.warmup_steps,
            "cooldown_fraction": fraction,
            "tokens_per_param": round(total * plan.global_batch_tokens / plan.params, 4),
            "train_flops": plan.train_flops * scale if plan.train_flops else None,
            "predicted_loss": None,
        }
    )


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (a checkpoint is large), else copies."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)  # a new file: the umask's mode


def make_branch(
    stable: str | os.PathLike,
    step: int,
    out: str | os.PathLike,
    fraction: float = 0.2,
    steps: int | None = None,
) -> RunConfig:
    """Create the branch folder ``out`` from the stable run's checkpoint ``step-<step>``
    (``steps``: the branch's length, see :func:`branch_plan`); returns its run config.
    Checks everything before writing anything."""
    stable, out = Path(stable).resolve(), Path(out).resolve()
    cfg = load_run_config(stable)
    plan = cfg.plan
    if plan.decay != "wsd":
        raise CgptError(
            f"{stable} is not a warmup-stable-decay run (plan.decay is {plan.decay!r}); "
            "plan the stable run with --decay wsd"
        )
    folder = stable / "checkpoints" / ckpt.tag_for(step)
    have = ", ".join(p.name for _, p in ckpt.published(stable / "checkpoints")) or "none"
    if not (folder / ckpt.COMPLETE).is_file():
        raise CgptError(f"{stable} has no complete checkpoint step-{step} (have: {have})")
    why = ckpt.problem(folder)
    if why:
        raise CgptError(f"checkpoint {folder} is unusable ({why})")
    if any(lr_at(plan, i) != plan.lr for i in range(plan.warmup_steps, step)):
        raise CgptError(
            f"the stable run was already cooling down before step {step}: branch from a "
            "checkpoint inside its stable phase"
        )
    new = branch_plan(plan, step, fraction, steps)
    if out.exists():
        raise CgptError(f"{out} already exists; choose a new folder for the branch")
    branch = cfg.model_copy(
        update={"plan": new, "runtime": cfg.runtime.model_copy(update={"out_dir": str(out)})}
    )
    info = {
        "parent": str(stable),
        "step": step,
        "cooldown_fraction": fraction,
        "steps": new.steps,
        "tokens": new.tokens,
    }
    _publish_branch(out, lambda tmp: _fill(tmp, folder, branch, stable / "metrics.jsonl", info))
    return branch


def _fill(tmp: Path, folder: Path, branch: RunConfig, metrics: Path, info: dict) -> None:
    """The branch folder's files: the checkpoint (hard links), config, metrics rows up to the
    branch step (through the tolerant reader: a row cut by a kill is skipped), branch.json."""
    _link_tree(folder, tmp / "checkpoints" / folder.name)
    branch.save(tmp / RUN_CONFIG)
    rows = [
        r for r in read_metrics(metrics) if isinstance(r, dict) and r.get("step", 0) <= info["step"]
    ]
    write_atomic(tmp / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_atomic(tmp / BRANCH_FILE, json.dumps(info, indent=1) + "\n")


def _publish_branch(out: Path, fill) -> None:
    """Build the branch in a temporary folder beside ``out`` and rename it to ``out`` whole:
    an interrupted or failed branch leaves nothing that `cgpt train --resume` would train
    (a killed one leaves a temporary folder that the next branch to ``out`` removes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    held = HeldTempDir(out)
    try:
        fill(held.path)
        make_public(held.path)
        fsync_dir(held.path)
        if out.exists() or out.is_symlink():
            raise CgptError(f"{out} already exists; choose a new folder for the branch")
        os.rename(held.path, out)  # the publish: one atomic rename
        fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(held.path, ignore_errors=True)
        raise CgptError(
            f"cannot make the branch {str(out)!r}: {e.strerror or e}; nothing was made"
        ) from None
    except BaseException:
        shutil.rmtree(held.path, ignore_errors=True)
        raise
    finally:
        held.release()
