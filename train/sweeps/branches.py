"""Cooldown branches in a sweep (``branches: {at: [0.5, 1, 2, 4]}``): making, checking and
pruning the branch folders of each stable WSD run; the points themselves are planned by
cgpt.train.sweeps.points.plan_branch_group (docs/SCALING.md, Branches in a sweep).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import layout as ckpt
from cgpt.train.config import RUN_CONFIG
from cgpt.train.fits.curves import BRANCH_FILE
from cgpt.train.lock import LOCK_NAME, FolderLock
from cgpt.train.sweeps.branch import make_branch
from cgpt.train.sweeps.points import Point
from cgpt.train.sweeps.train import run_summary

# ---- making the branch folders -------------------------------------------------------------


def _remove_unfinished(folder: Path, k: int, src: Path) -> None:
    """A branch folder without branch.json is one whose creation was interrupted
    (make_branch writes branch.json last, and nothing trains before it): remove it, under
    its lock, so that it is made again. Anything else in its place is refused."""
    made = {LOCK_NAME, "checkpoints", RUN_CONFIG, "metrics.jsonl"}  # what make_branch writes
    odd = [p.name for p in folder.iterdir() if p.name not in made]
    odd += [f"checkpoints/{p.name}" for p in folder.glob("checkpoints/*") if p.name != f"step-{k}"]
    if odd:
        raise CgptError(
            f"{folder} is not a branch of {src} (it has no {BRANCH_FILE} but holds "
            f"{odd[0]}); move it away, then run the sweep again"
        )
    with FolderLock(folder, "branch folder"):
        for child in folder.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    (folder / LOCK_NAME).unlink(missing_ok=True)
    folder.rmdir()


def prepare_branch(p: Point, stable: Point) -> str | None:
    """Make ``p``'s run folder from its stable run's checkpoint unless it exists. None: the
    folder is ready to train; else why it cannot be made (the stable run stopped before the
    branch step). A checkpoint the stable run passed but no longer has is a CgptError."""
    assert p.branch_step is not None
    folder, src = Path(p.cfg.runtime.out_dir), Path(stable.cfg.runtime.out_dir)
    if (folder / BRANCH_FILE).is_file():
        return None
    k, root = p.branch_step, src / "checkpoints"
    if folder.exists():
        _remove_unfinished(folder, k, src)
    if (root / ckpt.tag_for(k) / ckpt.COMPLETE).is_file():
        make_branch(src, k, folder, p.cfg.plan.cooldown_fraction or 0.0, p.cfg.plan.steps)
        return None
    have = [s for s, _ in ckpt.published(root)]
    reached = max(have + [int((run_summary(src) or {}).get("steps") or 0)])
    if reached >= k:
        raise CgptError(
            f"branch {p.name} starts from checkpoint step-{k} of its stable run {src}, which "
            f"is gone (have: {', '.join(f'step-{s}' for s in have) or 'none'}); restore it, "
            f"or delete {src} so that the sweep trains the stable run again"
        )
    return f"its stable run {stable.name} stopped at step {reached}, before step {k}"


def prepare_ready_branches(stable: Point, branches: list[Point], log=print) -> None:
    """Before and after each stable-run process: make every branch whose checkpoint exists
    (so that no later process of the stable run can prune it first). Once the stable run
    has completed and every branch is made, its checkpoints are pruned back to the sweep's
    ``keep_last`` plus the branch steps (hard links: the branches keep their own)."""
    src = Path(stable.cfg.runtime.out_dir)
    root = src / "checkpoints"
    for b in branches:
        ready = (root / ckpt.tag_for(b.branch_step or 0) / ckpt.COMPLETE).is_file()
        if ready and not (Path(b.cfg.runtime.out_dir) / BRANCH_FILE).is_file():
            prepare_branch(b, stable)
            log(f"branch {b.name}: made from {stable.name}'s checkpoint step-{b.branch_step}")
    made = all((Path(b.cfg.runtime.out_dir) / BRANCH_FILE).is_file() for b in branches)
    if branches and made and (run_summary(src) or {}).get("status") == "completed":
        with FolderLock(src, "run folder"):
            found = ckpt.published(root)
            keep = {s for s, _ in found[-branches[0].cfg.runtime.keep_last :]}
            keep |= set(stable.cfg.runtime.save_steps)
            for s, folder in found:
                if s not in keep:
                    shutil.rmtree(folder)


# ---- costs ---------------------------------------------------------------------------------


def describe_points(points: list[Point]) -> list[str]:
    """The dry run's lines for a sweep with branches: every point with its training FLOPs
    (as if trained alone) and its cost (what the sweep spends), then the totals."""
    lines = []
    for p in points:
        pl = p.cfg.plan
        role = (
            f"branch of {p.branch_of} from step {p.branch_step}"
            if p.branch_of
            else f"stable run; checkpoints at steps {p.cfg.runtime.save_steps}"
        )
        lines.append(
            f"{p.name:28s} params {pl.params:>11,}  tokens {pl.tokens:>12,}  steps "
            f"{pl.steps:>6,}  lr {pl.lr:.2e}  FLOPs {p.flops():.3e}  cost {p.cost_flops():.3e}  "
            f"({role})"
        )
    alone = sum(p.flops() for p in points)
    cost = sum(p.cost_flops() for p in points)
    n_stable = sum(p.branch_of is None for p in points)
    lines.append(
        f"{n_stable} stable runs, {len(points) - n_stable} branches: {cost:.3e} FLOPs in all, "
        f"{cost / alone:.0%} of the {alone:.3e} that dedicated runs of the same points would cost"
    )
    return lines
