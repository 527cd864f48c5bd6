"""The run config: one YAML file, fully resolved, typed and validated on load.

Sections: ``model`` (the model's own :class:`cgpt.model.GPTConfig`, validated by it),
``data`` (prepared token shards + tokenizer),
``plan`` (what the planner decides: tokens, steps, batch, LR schedule, optimizer) and
``runtime`` (how this run executes: micro-batch, ZeRO, precision, logging, checkpoints).
`cgpt plan --write` produces it; `cgpt train` consumes it; the resolved copy is written
into every run folder and checkpoint. Unknown keys are errors that name the nearest key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from cgpt.model.config import GPTConfig, MuPConfig
from cgpt.model.errors import ConfigError
from cgpt.model.files import write_atomic
from cgpt.train.checks import HF_PREFIX, NAME_PATTERN, NAME_RULE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's lax mode reads true as 1
        raise ValueError(f"expected an integer, got {str(value).lower()}")
    return value


# an integer field: YAML's true/false are refused, not read as 1/0 (`runtime.keep_last: true`
# kept one checkpoint). Not pydantic's strict int: that also refuses numpy integers and
# integral floats (2e3), which configs built by code carry
Int = Annotated[int, BeforeValidator(_not_bool)]


class DataSource(Strict):
    """One source of a training mixture: a prepared data folder and its sampling weight."""

    name: str  # used in metric names (val_loss/NAME) and folder names: NAME_PATTERN
    path: str  # folder written by `cgpt prepare`
    weight: float  # > 0; weights are relative (normalised over the sources)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        import re

        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"source name {name!r}: use {NAME_RULE}")
        return name

    @model_validator(mode="after")
    def _check_weight(self):
        import math

        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(
                f"source {self.name!r} has weight {self.weight}; every weight must be a "
                "positive number (drop a source instead of giving it weight 0)"
            )
        return self


class DataSection(Strict):
    """``path``: one prepared folder; or ``sources``: a weighted mixture of folders prepared
    with the same tokenizer (cgpt.train.data.mixture). ``val``: NAME -> folder whose val split
    is evaluated as ``val_loss/NAME`` (default: each source's own val split)."""

    path: str | None = None  # folder written by `cgpt prepare` (train/val shards + meta.json)
    tokenizer: str | None = None  # tokenizer folder; default: the one recorded in meta.json
    sources: list[DataSource] | None = None  # a weighted mixture instead of ``path``
    val: dict[str, str] | None = None  # named validation sets (their val splits)

    @field_validator("sources", "val", mode="after")
    @classmethod
    def _absolute(cls, v):
        # like data.path in a run folder: resolved against the working directory, so a run
        # records where its data is and a resume compares the same folders
        if isinstance(v, dict):
            return {k: str(Path(p).expanduser().resolve()) for k, p in v.items()}
        if isinstance(v, list):
            return [
                s.model_copy(update={"path": str(Path(s.path).expanduser().resolve())}) for s in v
            ]
        return v

    @model_validator(mode="after")
    def _check_sources(self):
        if (self.path is None) == (self.sources is None):
            raise ValueError("give exactly one of data.path and data.sources")
        if self.sources is not None:
            if not self.sources:
                raise ValueError("data.sources is empty; list at least one {name, path, weight}")
            names = [s.name for s in self.sources]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"data.sources names must be unique; repeated: {', '.join(dup)}")
        if self.val is not None:
            import re

            if not self.val:
                raise ValueError("data.val is empty; leave it out to use each source's val split")
            bad = [n for n in self.val if not re.fullmatch(NAME_PATTERN, n)]
            if bad:
                raise ValueError(f"data.val names may use {NAME_RULE}; got {bad[0]!r}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # unset mixture keys are left out of the YAML: older configs compare equal
        d = handler(self)
        for key in ("path", "sources", "val"):
            if d.get(key) is None:
                d.pop(key, None)
        return d


class BatchPhase(Strict):
    """One constant-batch stretch of a run (the 13B run had two).

    Runs ``steps`` optimizer steps at ``global_batch_seqs``; the LR schedule inside the
    phase is evaluated at counter ``schedule_start_step + i`` with the phase's own warmup
    and decay (docs/REFERENCE.md, The 13B batch change: the counter was rescaled when the batch
    grew).
    """

    global_batch_seqs: Int = Field(gt=0)
    steps: Int = Field(gt=0)
    schedule_start_step: Int = Field(0, ge=0)
    warmup_steps: Int = Field(ge=0)
    decay_steps: Int = Field(ge=0)
    decay: Literal["linear", "cosine", "wsd"] = "linear"
    # wsd only: the last fraction of the phase's schedule (warmup + decay steps) that cools
    # down linearly to min_lr; None elsewhere (and left out of the YAML: older configs
    # compare equal). See cgpt.train.plan.schedule.
    cooldown_fraction: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _default_cooldown(cls, data: Any) -> Any:
        return _wsd_default(data)

    @model_validator(mode="after")
    def _check_cooldown(self):
        _check_cooldown(self.decay, self.cooldown_fraction)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_none_cooldown(handler(self))


# Hägele et al. 2024 (arXiv 2405.18392): a cooldown over the last 20% of the steps matches
# a cosine schedule's final loss; docs/REFERENCE.md, Related scaling laws
WSD_COOLDOWN_FRACTION = 0.2


def _wsd_default(data: Any) -> Any:
    if isinstance(data, dict) and data.get("decay") == "wsd":
        if data.get("cooldown_fraction") is None:
            data = {**data, "cooldown_fraction": WSD_COOLDOWN_FRACTION}
    return data


def _check_cooldown(decay: str, fraction: float | None) -> None:
    if fraction is not None and decay != "wsd":
        raise ValueError(
            f"cooldown_fraction ({fraction}) applies to decay: wsd only (decay is {decay!r})"
        )


def _drop_none_cooldown(d: Any) -> Any:
    if isinstance(d, dict) and d.get("cooldown_fraction", 0) is None:
        d.pop("cooldown_fraction")
    return d


class PlanSection(Strict):
    name: str = "custom"
    params: Int = Field(gt=0)
    seq_len: Int = Field(gt=0)
    tokens: Int = Field(gt=0)
    steps: Int = Field(gt=0)  # total optimizer steps over all phases
    global_batch_seqs: Int = Field(gt=0)  # the first phase's batch
    lr: float = Field(gt=0)  # peak
    min_lr: float = Field(ge=0)  # end of decay (Cerebras: 10% of peak)
    warmup_steps: Int = Field(ge=0)
    # linear / cosine: from the peak after warmup to min_lr over decay_steps (Cerebras-GPT);
    # wsd: warmup-stable-decay, the peak held until the last cooldown_fraction of the steps,
    # then linear to min_lr (Hägele et al. 2024; cgpt.train.plan.schedule)
    decay: Literal["linear", "cosine", "wsd"] = "linear"
    decay_steps: Int = Field(ge=0)
    cooldown_fraction: float | None = Field(None, gt=0, le=1)  # wsd only (default 0.2)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    batch_schedule: list[BatchPhase] | None = None  # None: one phase from the fields above
    tokens_per_param: float | None = None
    train_flops: float | None = None
    predicted_loss: float | None = None

    @property
    def global_batch_tokens(self) -> int:
        return self.global_batch_seqs * self.seq_len

    def phases(self) -> list[BatchPhase]:
        if self.batch_schedule:
            return list(self.batch_schedule)
        return [
            BatchPhase(
                global_batch_seqs=self.global_batch_seqs,
                steps=self.steps,
                warmup_steps=self.warmup_steps,
                decay_steps=self.decay_steps,
                decay=self.decay,
                cooldown_fraction=self.cooldown_fraction,
            )
        ]

    @model_validator(mode="before")
    @classmethod
    def _default_cooldown(cls, data: Any) -> Any:
        return _wsd_default(data)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_none_cooldown(handler(self))

    @field_validator("adam_betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):  # what torch.optim.AdamW requires
            raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas

    @model_validator(mode="after")
    def _check(self):
        _check_cooldown(self.decay, self.cooldown_fraction)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is above the peak lr ({self.lr})")
        _check_warmup(self)
        if self.batch_schedule and sum(p.steps for p in self.batch_schedule) != self.steps:
            raise ValueError("plan.steps must equal the sum of plan.batch_schedule[*].steps")
        return self


def _check_warmup(plan: PlanSection) -> None:
    """A warmup longer than the run never reaches the peak LR (warmup 10**20 trained every
    step at ~1e-22): refuse it, per batch phase too (each counts from its schedule start)."""
    if plan.warmup_steps > plan.steps:
        raise ValueError(
            f"warmup_steps ({plan.warmup_steps}) is longer than the run (steps "
            f"{plan.steps}): the LR would never reach its peak; use at most {plan.steps}"
        )
    for i, ph in enumerate(plan.batch_schedule or []):
        if ph.warmup_steps > ph.schedule_start_step + ph.steps:
            raise ValueError(
                f"batch_schedule[{i}].warmup_steps ({ph.warmup_steps}) is longer than the "
                f"phase's schedule ({ph.schedule_start_step} + {ph.steps} steps)"
            )


class RuntimeSection(Strict):
    out_dir: str = "runs/run"
    seed: Int = 1234
    micro_batch: Int = Field(1, gt=0)  # sequences per rank per forward pass
    zero_stage: Int = Field(1, ge=0, le=3)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the model (GPU)
    activation_checkpointing: bool = False
    eval_every: Int = Field(100, ge=0)  # steps; 0 = only at the end
    eval_batches: Int = Field(8, gt=0)
    # lm-eval tasks (or suite names, e.g. cerebras-gpt) run on rank 0 at every evaluation,
    # logged as eval/TASK/METRIC; keep eval_limit small: the other ranks wait meanwhile
    eval_tasks: list[str] = Field(default_factory=list)
    eval_limit: Int | None = Field(None, gt=0)  # examples per task
    eval_include_path: str | None = None  # a folder of local lm-eval task YAML
    save_every: Int = Field(500, ge=0)  # steps; 0 = only at the end
    # checkpoints at these steps too (where sweep branches start: cgpt.train.sweeps.branch);
    # left out of the YAML when empty, so older configs compare equal
    save_steps: list[Annotated[Int, Field(gt=0)]] = Field(default_factory=list)
    keep_last: Int = Field(2, gt=0)
    log_every: Int = Field(10, gt=0)
    wandb: Literal["auto", "offline", "online", "off"] = "auto"
    wandb_project: str = "cgpt"
    export_hf: bool = True  # write RUN_DIR/hf at the end
    max_steps: Int | None = Field(None, gt=0)  # stop early (tests, smoke runs)
    # a collective that waits longer than this on another rank fails on every rank with a
    # message naming the step (a dead or stalled peer never hangs the run silently)
    collective_timeout_s: float = Field(600.0, gt=0)
    # print a warning when no step finished for this many times the average step time
    watchdog_factor: float = Field(10.0, gt=1)
    # consecutive optimizer steps skipped for non-finite gradients before the run stops
    max_skipped_steps: Int = Field(3, ge=0)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        d = handler(self)
        if isinstance(d, dict) and not d.get("save_steps", True):
            d.pop("save_steps")
        return d


class Provenance(Strict):
    """Which cgpt wrote this config (cgpt.train.provenance); informational, never compared."""

    version: str
    git_revision: str | None = None


class InitSection(Strict):
    """Continued pretraining (cgpt.train.source, cgpt.train.loop.init_from): start from
    ``source``'s weights (a HF GPT-2 folder, ``hf:NAME``, a cgpt model file, run folder or
    checkpoint step); the
    model section is taken from it. The trainer fills the rest: the parent it loaded."""

    source: str
    path: str | None = None  # the folder or file the weights came from
    sha256: str | None = None  # of the weight file(s) (cgpt.train.source.digest)
    what: str | None = None
    tokenizer: str | None = None  # the source's tokenizer folder
    check: bool = True  # step 0: compare the loss with transformers' (HF sources)


class RunConfig(Strict):
    model: GPTConfig  # the model's own dataclass: one schema, validated by GPTConfig itself
    data: DataSection
    plan: PlanSection
    runtime: RuntimeSection = RuntimeSection()
    provenance: Provenance | None = None  # filled by the trainer in the run folder's copy
    init: InitSection | None = None  # continued pretraining: weights from a source

    @model_validator(mode="after")
    def _check_shapes(self):
        if self.plan.seq_len > self.model.n_positions:
            raise ValueError(
                f"plan.seq_len ({self.plan.seq_len}) exceeds model.n_positions "
                f"({self.model.n_positions})"
            )
        return self

    # ---- io -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        if d.get("provenance") is None:
            d.pop("provenance", None)  # only a run folder's copy carries it
        if d.get("init") is None:
            d.pop("init", None)  # only continued-pretraining runs carry it
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write YAML atomically (temporary file, then rename)."""
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def config_diff(old: dict, new: dict, runtime_keys: tuple[str, ...] = ()) -> list[str]:
    """Keys ("plan.lr", ...) whose values differ between two run-config dicts: every key of
    the model, data and plan sections, and the named runtime keys (paths compared absolute)."""
    old, new, keys = absolute_paths(old), absolute_paths(new), []
    for section in ("model", "data", "plan"):
        a, b = old.get(section) or {}, new.get(section) or {}
        keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    a, b = old.get("runtime") or {}, new.get("runtime") or {}
    return keys + [f"runtime.{k}" for k in runtime_keys if a.get(k) != b.get(k)]


def _nearest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _fields_of(cls) -> dict:
    """Field name -> field info (with ``.annotation``) of a pydantic model or dataclass."""
    if hasattr(cls, "model_fields"):
        return cls.model_fields
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: SimpleNamespace(annotation=hints[f.name]) for f in dataclasses.fields(cls)}
    return {}


def _section_model(loc: tuple) -> type | None:
    cur: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = _fields_of(cur).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in (MuPConfig, GPTConfig, DataSection, PlanSection, RuntimeSection, BatchPhase):
            if (
                ann is cand
                or cand in getattr(ann, "__args__", ())
                or (
                    getattr(ann, "__args__", None)
                    and any(cand in getattr(a, "__args__", ()) for a in ann.__args__)
                )
            ):
                cur = cand
                break
        else:
            return None
    return cur


def format_validation_error(e: ValidationError) -> str:
    msgs = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "config"
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            section = _section_model(loc)
            valid = list(_fields_of(section)) if section else []
            msgs.append(f"unknown key {where!r}{_nearest(str(loc[-1]), valid)}")
        elif err["type"] == "value_error" and isinstance(
            err.get("ctx", {}).get("error"), ConfigError
        ):
            msgs.append(f"{where}: {err['ctx']['error']}")  # GPTConfig's own message
        elif err["type"] == "missing":
            msgs.append(f"missing key {where!r}")
        else:
            msgs.append(f"{where}: {err['msg']}")
    return "; ".join(msgs)


def parse_run_config(data: dict, source: str = "config") -> RunConfig:
    """Validate a raw run-config dict; reads nothing else. A model section taken from
    ``init.source`` is filled before by the caller (source.fill.fill_model_section)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with model/data/plan/runtime sections")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None
    return cfg


_YAML_BOOL_WORDS = {"on", "off", "yes", "no", "y", "n"}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set section.key=value` overrides (value parsed as YAML); bare keys
    without a section go to `runtime` (e.g. `--set wandb=off`)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 1:
            parts = ["runtime"] + parts
        cur = data
        for p in parts[:-1]:
            if not isinstance(cur.get(p, {}), dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            cur = cur.setdefault(p, {})
        # YAML 1.1 reads off/on/yes/no as booleans; keep them as words so that
        # `--set wandb=off` selects the mode (pydantic still accepts them for bool fields).
        word = raw.strip()
        try:
            value = word if word.lower() in _YAML_BOOL_WORDS else yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. "%n", "`x`"): the plain string, validated below
        cur[parts[-1]] = value
    return data


def read_yaml(path: str | os.PathLike, what: str = "run config"):
    """safe_load a YAML file; a missing file or bad YAML is one ConfigError line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} not found")
    try:
        return yaml.safe_load(p.read_text())
    except UnicodeDecodeError as e:  # binary bytes (a damaged or wrong file)
        raise ConfigError(
            f"{p}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not "
            "UTF-8); restore it or pass the run config YAML"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{p}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})"
        ) from None


RUN_CONFIG = "config.yaml"  # the resolved config inside every run folder


def load_run_config(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    fill: Callable[[dict], dict] | None = None,
) -> RunConfig:
    """A run config YAML, or a run folder: its own resolved ``config.yaml`` with
    ``runtime.out_dir`` pointing at that folder (so `cgpt train RUN_DIR --resume` continues
    exactly that run, wherever it is called from). ``fill`` runs on the raw dict before
    validation: the trainer's entry passes source.fill.fill_model_section (reads init.source)."""
    data, where = _read_run_config(path, overrides or [])
    return parse_run_config(fill(data) if fill and isinstance(data, dict) else data, where)


def _read_run_config(path: str | os.PathLike, overrides: list[str]) -> tuple[dict, str]:
    p = Path(path)
    if p.is_dir():
        if not (p / RUN_CONFIG).is_file():
            raise ConfigError(
                f"{str(p)!r} is a folder without {RUN_CONFIG}: pass a run config "
                "YAML, or the folder of a run that has started"
            )
        data = read_yaml(p / RUN_CONFIG) or {}
        if isinstance(data, dict):
            data.pop("provenance", None)
            data.setdefault("runtime", {})["out_dir"] = str(p.resolve())
        return apply_overrides(data, overrides), str(p / RUN_CONFIG)
    return apply_overrides(read_yaml(p) or {}, overrides), str(p)


def tokenizer_of(data: DataSection | dict) -> str | None:
    """A run's tokenizer folder: ``data.tokenizer`` if set, else the folder recorded in the
    data folder's ``meta.json`` by `cgpt prepare` (None when neither names one)."""
    import json

    d = data.model_dump() if isinstance(data, DataSection) else (data or {})
    if d.get("tokenizer"):
        return str(d["tokenizer"])
    try:
        path = d.get("path") or ((d.get("sources") or [{}])[0] or {}).get("path")  # 1st source
        meta = json.loads((Path(path or "") / "meta.json").read_text())
        return (meta.get("tokenizer") or {}).get("dir") or None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


PATH_KEYS = (
    ("data", "path"),
    ("data", "tokenizer"),
    ("runtime", "out_dir"),
    ("init", "source"),  # hf:NAME is not a path and is kept as it is
)


def absolute_paths(d: dict) -> dict:
    """A config dict with its folder paths made absolute (against the working directory), so
    a run folder records where its data is and comparisons ignore how a path was spelled."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for section, key in PATH_KEYS:
        sec = out.get(section)
        if isinstance(sec, dict) and sec.get(key) and not str(sec[key]).startswith(HF_PREFIX):
            sec[key] = str(Path(sec[key]).expanduser().resolve())
    return out


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    return parse_run_config(absolute_paths(cfg.to_dict()))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file via a temporary name in the same folder, fsync, then rename; the
    file gets the user's umask mode (the one atomic writer: cgpt.model.files)."""
    write_atomic(path, text)
