"""What `--resume` continues from (the newest checkpoint that reads back whole, or
``--from step-N``) and what it may change (``--allow-change KEYS``); a checkpoint from
another run is refused. Read-only: cgpt.train.checkpoints.rewind writes. The rules:
docs/DESIGN-NOTES.md, checkpoints/resume.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints import identity
from cgpt.train.checkpoints.universal import (
    UNIVERSAL,
    broken,
    needs_universal,
    ranks_text,
    saved_topology,
)
from cgpt.train.checkpoints.universal import published as universal_published
from cgpt.train.config import RUN_CONFIG, config_diff
from cgpt.train.metrics import read_metrics  # the one tolerant JSONL reader

# runtime keys whose change makes a checkpoint unusable (the rest may change on --resume;
# a new runtime.zero_stage or world size goes through a universal checkpoint, see
# cgpt.train.checkpoints.universal)
RESUME_RUNTIME_KEYS = ("seed", "precision")
# what a rewind may change: the optimizer's hyperparameters and the LR schedule's shape,
# nothing that moves the data position or the model
CHANGEABLE = (
    "plan.lr",
    "plan.min_lr",
    "plan.warmup_steps",
    "plan.decay",
    "plan.decay_steps",
    "plan.grad_clip",
    "plan.weight_decay",
    "plan.adam_eps",
    "plan.adam_betas",
)
CHANGES_FILE = "changes.jsonl"
DATA = "data"  # --allow-change data: continue on data whose checksums changed


@dataclass(frozen=True)
class ResumeRequest:
    resume: bool = False
    from_step: str | None = None  # "step-N", "N" or a checkpoint folder
    allow_change: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.from_step or self.allow_change) and not self.resume:
            raise CgptError("--from and --allow-change go with --resume")
        bad = [k for k in self.allow_change if k not in (*CHANGEABLE, DATA)]
        if bad:
            raise CgptError(
                f"--allow-change {','.join(bad)}: a resumed run may change only "
                f"{', '.join(CHANGEABLE)} and {DATA} (data with other checksums)"
            )


@dataclass
class ResumePoint:
    folder: Path | None = None  # the checkpoint to load (None: start from step 0)
    state: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)  # key -> [old, new]
    abandon: list[Path] = field(default_factory=list)  # newer checkpoints a rewind sets aside
    warnings: list[str] = field(default_factory=list)
    # (world size, ZeRO stage) that wrote the checkpoint, and whether this run loads it
    # through DeepSpeed's universal format (another world size or stage)
    saved_topology: tuple[int, int] | None = None
    universal: bool = False
    data: dict = field(default_factory=dict)  # the data's identity now (cgpt...identity)


def parse_allow_change(text: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (text or "").split(",") if k.strip())


def _value(d: dict, key: str):
    section, name = key.split(".", 1)
    return (d.get(section) or {}).get(name)


def find_resume_point(
    run_dir: Path, new_cfg: dict, req: ResumeRequest, world_size: int, zero_stage: int
) -> ResumePoint:
    """Check the run folder against the request; raise CgptError naming the fix."""
    saved = run_dir / RUN_CONFIG
    current = identity.data_identity(new_cfg.get("data") or {})
    if not req.resume:
        if saved.exists():
            raise CgptError(
                f"run folder {str(run_dir)!r} already holds a run; continue it "
                f"with: cgpt train {shlex.quote(str(run_dir))} --resume (or set "
                "runtime.out_dir to a new folder)"
            )
        return ResumePoint(data=current)
    if not saved.is_file():
        if req.from_step:
            raise CgptError(f"--from {req.from_step}: {str(run_dir)!r} holds no run yet")
        return ResumePoint(data=current)  # preempted before starting: a fresh start
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CgptError(
            f"{saved} is unreadable ({e.__class__.__name__}); restore it from a "
            f"checkpoint's copy (checkpoints/step-N/{RUN_CONFIG})"
        ) from None
    recorded = identity.read_identity(run_dir / identity.DATA_FILE)
    point = ResumePoint(data=current)
    data_changed = identity.compare(recorded, current)[0] if recorded is not None else []
    point.changes = _config_changes(run_dir, old, new_cfg, req, recorded is not None, data_changed)
    if recorded is not None:  # None: a run from before data.json (paths compared as values)
        point.warnings += _data_changes(run_dir, recorded, current, req, world_size, point)
    _choose_checkpoint(run_dir / "checkpoints", req, point)
    if point.folder is None:
        return point
    point.state = ckpt.read_state(point.folder)
    known = [recorded or current, *_earlier_data(run_dir)]
    why = identity.foreign_checkpoint(point.folder, point.state, new_cfg, known)
    if why:
        aside = point.folder.parent / f"foreign-{point.folder.name}"
        raise CgptError(
            f"checkpoint {point.folder} is not this run's ({why}); nothing was resumed or "
            f"changed. To resume from the run's previous checkpoint, set it aside: mv "
            f"{shlex.quote(str(point.folder))} {shlex.quote(str(aside))}"
        )
    _universal(point, old, world_size, zero_stage)
    return point


def _config_changes(
    run_dir: Path,
    old: dict,
    new_cfg: dict,
    req: ResumeRequest,
    by_checksums: bool,
    data_changed: list[str],
) -> dict:
    """key -> [old, new] of the allowed config changes; refuses the others (naming a data
    change too). With a data record (``by_checksums``) data folders are compared through
    their checksums instead."""
    a, b = (identity.without_data_paths(old), identity.without_data_paths(new_cfg))
    diff = config_diff(*((a, b) if by_checksums else (old, new_cfg)), RESUME_RUNTIME_KEYS)
    refused = [k for k in diff if k not in req.allow_change]
    if refused:
        changeable = [k for k in refused if k in CHANGEABLE]
        hint = (
            f"; to resume with the new values add --allow-change {','.join(changeable)}"
            if changeable and len(changeable) == len(refused)
            else "; restore them or start a new run (runtime.out_dir)"
        )
        data = ""
        if data_changed and DATA not in req.allow_change:
            data = f" (and the data: {'; '.join(data_changed)} hold other tokens)"
            hint = "; restore them or start a new run (runtime.out_dir)"
        raise CgptError(
            f"cannot resume {str(run_dir)!r}: the config changed in "
            f"{', '.join(refused)}{data}, which breaks resumption{hint}"
        )
    return {k: [_value(old, k), _value(new_cfg, k)] for k in diff}


def _data_changes(
    run_dir: Path,
    recorded: dict,
    current: dict,
    req: ResumeRequest,
    world_size: int,
    point: ResumePoint,
) -> list[str]:
    """Refuse data whose checksums changed since the run started (unless --allow-change
    data, then recorded as a change); note a folder that moved with the same checksums."""
    changed, moved = identity.compare(recorded, current)
    if changed and DATA not in req.allow_change:
        keys = ",".join([*req.allow_change, DATA])
        extra = f" --from {req.from_step}" if req.from_step else ""
        raise CgptError(
            f"cannot resume {str(run_dir)!r}: the data changed since the run started "
            f"({'; '.join(changed)} now hold other tokens: their sha256 checksums in "
            "meta.json differ); restore the data, or continue on the new data with: "
            + resume_command(run_dir, world_size, f"{extra} --allow-change {keys}")
        )
    if changed:
        point.changes[DATA] = [identity.checksums(recorded), identity.checksums(current)]
    return [
        f"data folder moved ({m}); its sha256 checksums are the ones the run started "
        "with, so the run continues on it"
        for m in moved
    ]


def _earlier_data(run_dir: Path) -> list[dict]:
    """Data the run trained on before an allowed data change (from changes.jsonl)."""
    rows = read_metrics(run_dir / CHANGES_FILE)
    return [r["changes"][DATA][0] for r in rows if DATA in (r.get("changes") or {})]


def _choose_checkpoint(root: Path, req: ResumeRequest, point: ResumePoint) -> None:
    if req.from_step:
        point.folder = _named(root, req.from_step)
        point.abandon = [
            p for s, p in ckpt.published(root) if s > int(point.folder.name.split("-")[1])
        ]
        return
    found, unusable = ckpt.newest_readable(root)
    point.warnings += unusable
    if found is None:
        if ckpt.published(root):
            raise CgptError(f"no checkpoint in {root} reads back whole; {'; '.join(unusable)}")
        return
    point.folder = found[1]


def _universal(point: ResumePoint, old: dict, world_size: int, zero_stage: int) -> None:
    """Whether the checkpoint loads through a universal conversion (another topology)."""
    assert point.folder is not None
    point.saved_topology = saved_topology(point.folder, point.state, old, world_size)
    point.universal = needs_universal(point.folder, point.saved_topology, world_size, zero_stage)
    if point.universal:
        (ows, ostage), how = point.saved_topology, "reusing its conversion"
        if universal_published(point.folder) is None:
            how = f"converting it once into {point.folder / UNIVERSAL}"
        elif broken(point.folder):  # a file of the conversion deleted or damaged
            how = f"its conversion in {point.folder / UNIVERSAL} lost a file: converting again"
        point.warnings.append(
            f"checkpoint {point.folder.name} was written by {ranks_text(ows)} with ZeRO stage "
            f"{ostage}; resuming on {ranks_text(world_size)} with ZeRO stage {zero_stage} "
            f"through DeepSpeed's universal checkpoint format ({how})"
        )


def _named(root: Path, name: str) -> Path:
    text = str(name).strip()
    folder = (
        Path(text) if "/" in text else root / (text if text.startswith("step-") else f"step-{text}")
    )
    have = ", ".join(p.name for _, p in ckpt.published(root)) or "none"
    if folder.resolve().parent != root.resolve() or not ckpt.PUBLISHED_TAG.match(folder.name):
        raise CgptError(f"--from {name}: not a checkpoint of this run (have: {have})")
    if not (folder / ckpt.COMPLETE).is_file():
        raise CgptError(f"--from {name}: no complete checkpoint {folder} (have: {have})")
    why = ckpt.problem(folder)
    if why:
        raise CgptError(f"--from {name}: checkpoint {folder} is unusable ({why})")
    return folder


def resume_command(run_dir: Path, world_size: int, extra: str = "") -> str:
    """A command that continues exactly this run, valid from any working directory."""
    path = shlex.quote(str(run_dir.resolve()))
    if world_size <= 1:
        return f"cgpt train {path} --resume{extra}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = max(1, world_size // max(local, 1))
    if nodes == 1:
        return f"cgpt launch {path} --gpus-per-node {local} --resume{extra}"
    return (
        f"cgpt launch {path} --nodes {nodes} --gpus-per-node {local} --resume{extra} "
        "(with the same --hostfile/--slurm options as the first launch)"
    )
