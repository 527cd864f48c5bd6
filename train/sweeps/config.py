"""The sweep file: its schema (validated, unknown keys refused) and loading it.

What the keys mean and what a sweep does with them: docs/SCALING.md, Sweeps.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cgpt.model.errors import ConfigError
from cgpt.train.config import (
    WSD_COOLDOWN_FRACTION,
    RuntimeSection,
    format_validation_error,
    read_yaml,
)

PER_POINT_FORBIDDEN = ("data", "tokenizer", "vocab_size", "seq_len")
DEFAULT_LR_GRID = (0.5, 1.0, 2.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareSpec(_Strict):
    """How to build the data folder when it is missing."""

    source: str = "stdlib"  # cgpt.train.data.sources spec
    vocab_size: int = Field(2048, ge=260)
    val_fraction: float = Field(0.01, gt=0, lt=1)
    max_docs: int | None = Field(None, gt=0)
    seed: int = 0


class SweepData(_Strict):
    path: str
    tokenizer: str | None = None  # default: <path>-tokenizer when prepared here, else meta.json's
    prepare: PrepareSpec | None = None


class SweepModel(_Strict):
    """Settings shared by every point (each point only picks a shape)."""

    seq_len: int = Field(128, gt=0)
    vocab_size: int | None = Field(None, gt=0)  # default: the data's vocab


class SizeSpec(_Strict):
    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    n_head: int = Field(gt=0)
    lr: float | None = Field(None, gt=0)  # this size's tuned peak LR (else the sweep's rule)


class IsoFlopSpec(_Strict):
    budgets: list[float] = Field(min_length=1)  # training FLOPs, algorithmic convention
    sizes: list[SizeSpec] = Field(min_length=1)


class SweepPlan(_Strict):
    """Small-model optimisation settings; everything else comes from the planner's rules."""

    global_batch_seqs: int | None = Field(None, gt=0)  # None: plan.recipe's batch law
    # the batch law when global_batch_seqs is left out (cgpt.train.plan.recipes)
    recipe: Literal["cerebras", "deepseek", "porian", "olmo"] = "cerebras"
    warmup_tokens_per_param: float | None = Field(None, gt=0)  # warmup tokens = k × params
    lr: float = Field(gt=0)  # peak LR at lr_base_width (lr: mup: the μP base LR)
    lr_base_width: int = Field(64, gt=0)
    lr_width_exponent: float = 0.0  # lr × (lr_base_width / n_embd)^exponent (1.0 = μP-like)
    min_steps: int = Field(10, gt=0)  # refuse points that would train for fewer steps
    # every point's LR decay (None: the planner's rule, linear below 1B parameters) and, for
    # wsd, the cooldown's share of the schedule (default 0.2; cgpt.train.plan.schedule)
    decay: Literal["linear", "cosine", "wsd"] | None = None
    cooldown_fraction: float | None = Field(None, gt=0, le=1)


class BranchSpec(_Strict):
    """One warmup-stable-decay run per size (and LR trial), cooled down at several token
    counts: ``at`` lists multiples of each size's planned tokens (tokens_per_param × params)."""

    at: list[float] = Field(min_length=1)
    cooldown_fraction: float | None = None  # default: plan.cooldown_fraction, else 0.2


class SweepConfig(_Strict):
    name: str
    out_dir: str
    data: SweepData
    model: SweepModel = SweepModel()
    tokens_per_param: float | None = Field(None, gt=0)
    sizes: list[SizeSpec] | None = None
    params: list[float] | None = None  # shapes chosen by the planner's family rules
    isoflop: IsoFlopSpec | None = None
    plan: SweepPlan
    lr: Literal["fixed", "tuned", "mup"] = "fixed"
    # lr: tuned: multipliers of each size's LR; lr: mup: of the μP base LR (each size then
    # runs one trial per multiplier, and the targets train at the best base LR's law)
    lr_grid: list[float] | None = None
    # lr: tuned: a size's loss is its best trial ("best") or the vertex of a parabola in ln LR
    # through the best trial and its neighbours ("parabola", cgpt.train.fits.lr_optimum)
    lr_select: Literal["best", "parabola"] = "best"
    # the loss law fitted on the frontier: "paper", L(C) = (C/a)^-b + c, or "power", c fixed
    # at 0, for ladders too small to see the floor (docs/SCALING.md, The fits)
    loss_law: Literal["paper", "power"] = "paper"
    branches: BranchSpec | None = None  # cooldown branches of one stable run per size
    # seed replicates: every point trained once per seed (runtime.seed); the fits see the mean
    # final loss of the replicates, and fit.json reports their spread (cgpt.train.sweeps.seeds)
    seeds: list[int] | None = None
    # held-out targets: sizes trained after the ladder (once each, at the first of seeds,
    # unless target_seeds lists their seeds) and left out of every fit; `cgpt sweep fit`
    # predicts each from the ladder's law, with the extrapolation ratio (its compute / the
    # largest fitted compute) and the error. With lr: tuned a target trains at the LR law of
    # the ladder's optimal LRs (target_lr.py), with lr: mup at the base LR that μP transfers
    # to its width
    targets: list[SizeSpec] | None = None
    # the seeds each target trains at: the first as target-SHAPE, each other as
    # target-SHAPE-sSEED; the target's measured loss is their mean, its spread reported beside
    # its prediction error (default: the first of seeds, else runtime.seed)
    target_seeds: list[int] | None = None
    runtime: dict[str, Any] = Field(default_factory=dict)  # RuntimeSection fields (not out_dir)

    @model_validator(mode="after")
    def _check(self):
        fixed = self.sizes is not None or self.params is not None
        if fixed == (self.isoflop is not None):
            raise ValueError(
                "give either sizes/params with tokens_per_param (fixed ratio) or "
                "isoflop: {budgets, sizes} (IsoFLOP), not both or neither"
            )
        if fixed and self.tokens_per_param is None:
            raise ValueError("sizes/params need tokens_per_param (e.g. 20, Chinchilla)")
        if self.isoflop is not None and self.tokens_per_param is not None:
            raise ValueError("an IsoFLOP sweep measures tokens_per_param; do not set it")
        if "out_dir" in self.runtime:
            raise ValueError("runtime.out_dir is set per point (OUT/runs/NAME); remove it")
        if self.lr_grid is not None:
            if self.lr == "fixed":
                raise ValueError("lr_grid goes with lr: tuned or lr: mup")
            if not self.lr_grid or any(not (m > 0 and math.isfinite(m)) for m in self.lr_grid):
                raise ValueError(f"lr_grid must list positive multipliers, got {self.lr_grid}")
            if len(set(self.lr_grid)) != len(self.lr_grid):
                raise ValueError(f"lr_grid lists a multiplier twice: {self.lr_grid}")
        if self.seeds is not None:
            if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds must list at least two different seeds, got {self.seeds}")
            if self.branches is not None:
                raise ValueError("seeds and branches do not combine yet; use one of them")
            if "seed" in self.runtime:
                raise ValueError("runtime.seed is set per replicate by seeds; remove it")
        if self.target_seeds is not None:
            self._check_target_seeds(self.target_seeds)
        if self.targets is not None and (self.isoflop is not None or self.branches is not None):
            raise ValueError(
                "targets go with a fixed-ratio sweep (sizes/params, tokens_per_param) at one "
                "LR per size (lr: fixed), at the LR law of tuned sizes (lr: tuned) or at the "
                "transferred base LR (lr: mup): drop isoflop or branches, or the targets"
            )
        if self.lr == "tuned" and any(s.lr is not None for s in self.targets or []):
            raise ValueError(
                "with lr: tuned a target trains at the ladder's LR law; remove the targets' lr"
            )
        if self.lr_select != "best" and not self.tunes_lr:
            raise ValueError(
                "lr_select goes with lr: tuned, or lr: mup with lr_grid (it picks among LR trials)"
            )
        if self.lr == "mup":
            own = (self.sizes or []) + (self.isoflop.sizes if self.isoflop else [])
            own += self.targets or []
            if any(s.lr is not None for s in own):
                raise ValueError(
                    "lr: mup transfers plan.lr to every size; remove the sizes' and targets' lr"
                )
        if self.plan.global_batch_seqs is None and self.plan.recipe == "cerebras":
            raise ValueError(
                "plan.global_batch_seqs is missing: give it, or set plan.recipe: deepseek, porian "
                "or olmo for that batch law (the Cerebras batch fit starts at 111M)"
            )
        if self.plan.cooldown_fraction is not None and self.plan.decay != "wsd":
            raise ValueError("plan.cooldown_fraction goes with plan.decay: wsd")
        if self.branches is not None:
            self._check_branches(self.branches)
        return self

    def _check_target_seeds(self, seeds: list[int]) -> None:
        if not self.targets:
            raise ValueError("target_seeds goes with targets: add targets, or drop target_seeds")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"target_seeds must list different seeds, got {seeds}")
        if "seed" in self.runtime:
            raise ValueError("runtime.seed is set per target by target_seeds; remove it")

    @property
    def target_seed_list(self) -> list[int] | None:
        """The seeds each held-out target trains at (None: runtime.seed, once)."""
        return self.target_seeds or (self.seeds[:1] if self.seeds else None)

    def _check_branches(self, b: BranchSpec) -> None:
        if self.isoflop is not None:
            raise ValueError(
                "branches need a tokens_per_param sweep (sizes/params): IsoFLOP points have "
                "fixed budgets, and branches of one run at several token counts are not "
                "supported there (yet); drop branches or isoflop"
            )
        if self.plan.decay != "wsd":
            raise ValueError(
                "branches need plan.decay: wsd (a branch shares the stable run's constant "
                "peak LR up to its own cooldown)"
            )
        if any(not (isinstance(m, (int, float)) and m > 0 and math.isfinite(m)) for m in b.at):
            raise ValueError(
                f"branches.at must list positive multiples of the planned tokens, got {b.at}"
            )
        if len(set(b.at)) != len(b.at):
            raise ValueError(f"branches.at lists a multiple twice: {b.at}")
        if 1 not in b.at:
            raise ValueError(
                f"branches.at must include 1 (the planned tokens_per_param: the loss law is "
                f"fitted on those points), got {b.at}"
            )
        f = b.cooldown_fraction
        if f is not None and not (0 < f < 1 and math.isfinite(f)):
            raise ValueError(f"branches.cooldown_fraction must be in (0, 1), got {f}")
        own = self.plan.cooldown_fraction
        if own is not None and not own < 1:
            raise ValueError(f"with branches, plan.cooldown_fraction must be in (0, 1), got {own}")
        if f is not None and own is not None and f != own:
            raise ValueError(
                f"branches.cooldown_fraction ({f}) differs from plan.cooldown_fraction ({own}): "
                "the stable run is the largest branch, so they must agree; give one of them"
            )
        if self.plan.warmup_tokens_per_param is None:
            raise ValueError(
                "branches need plan.warmup_tokens_per_param: every branch shares the stable "
                "run's warmup, and the planner's default warmup (20% of the steps for small "
                "runs) depends on the run's length"
            )

    @property
    def tunes_lr(self) -> bool:
        """Each size runs LR trials: lr: tuned, or lr: mup with an lr_grid of base LRs."""
        return self.lr == "tuned" or (self.lr == "mup" and self.lr_grid is not None)

    @property
    def grid(self) -> list[float]:
        """The LR multipliers each size runs at (one, 1.0, unless it tunes the LR)."""
        return (self.lr_grid or list(DEFAULT_LR_GRID)) if self.tunes_lr else [1.0]

    @property
    def kind(self) -> Literal["tokens_per_param", "isoflop"]:
        return "isoflop" if self.isoflop is not None else "tokens_per_param"

    @property
    def cooldown_fraction(self) -> float | None:
        """The wsd cooldown fraction of every point (branches included); None unless wsd."""
        if self.plan.decay != "wsd":
            return None
        own = self.branches.cooldown_fraction if self.branches else None
        return own or self.plan.cooldown_fraction or WSD_COOLDOWN_FRACTION


def _refuse_per_point_data(raw: dict, source: str) -> None:
    """A point with its own data/tokenizer would make losses incomparable: say so plainly
    (pydantic alone would only say 'unknown key')."""
    lists = [("sizes", raw.get("sizes"))]
    if isinstance(raw.get("isoflop"), dict):
        lists.append(("isoflop.sizes", raw["isoflop"].get("sizes")))
    for where, items in lists:
        for i, item in enumerate(items or []):
            bad = [k for k in PER_POINT_FORBIDDEN if isinstance(item, dict) and k in item]
            if bad:
                raise ConfigError(
                    f"{source}: {where}[{i}] sets {', '.join(bad)}: every point of a sweep must "
                    "use the sweep's data, tokenizer and sequence length, or their losses are not "
                    "comparable; run a separate sweep for other data"
                )


def parse_sweep(raw: Any, source: str = "sweep") -> SweepConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping (name, out_dir, data, plan, sizes or isoflop, ...)"
        )
    _refuse_per_point_data(raw, source)
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "sweep"
            if err["type"] == "extra_forbidden":
                msgs.append(f"unknown key {where!r}")
            elif err["type"] == "missing":
                msgs.append(f"missing key {where!r}")
            else:
                msgs.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{source}: {'; '.join(msgs)}") from None
    try:
        RuntimeSection(**sweep.runtime)
    except ValidationError as e:
        raise ConfigError(f"{source}: runtime: {format_validation_error(e)}") from None
    return sweep


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    return parse_sweep(read_yaml(path, "sweep file"), str(path))
