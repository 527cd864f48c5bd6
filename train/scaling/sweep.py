"""Scaling sweeps: many small runs -> ``results.jsonl`` -> fitted laws (``fit.json``) and plots.

A sweep file (YAML, validated, unknown keys refused) names one data folder + tokenizer, the
model sizes, and either a fixed tokens-per-parameter ratio (the Cerebras-GPT way) or IsoFLOP
budgets (Chinchilla approach 2). Every point is a normal run: planned by the planner's rules
(``cgpt.train.plan.planner.plan_for_shape``: tokens = tpp × params, steps, warmup, decay, eps, init)
with the sweep's explicit small-model batch and LR (the published rules give LRs for 100M+
models), written as a run config to ``OUT/configs/NAME.yaml`` and trained by
``python -m cgpt.train`` in a subprocess into ``OUT/runs/NAME/`` — so a crashing or diverging
point cannot take the sweep down. The sweep folder::

    OUT/sweep.yaml      the resolved sweep definition (what `cgpt sweep fit` reads)
    OUT/configs/*.yaml  one run config per point        OUT/logs/*.log  each point's output
    OUT/runs/*/         one run folder per point         OUT/results.jsonl  one line per point
    OUT/fit.json        fits (cgpt.train.scaling.fit)            OUT/scaling.png, OUT/isoflop.png

Learning rates (``lr:`` in the sweep file):

* ``fixed`` (default): one run per size at ``plan.lr`` (× the width rule
  ``(lr_base_width / n_embd)^lr_width_exponent``, or the size's own ``lr``);
* ``tuned``: one run (a *trial*) per size and multiplier in ``lr_grid`` (default
  [0.5, 1, 2]) around that LR, named ``SHAPE-lrxM``; results.jsonl records every trial
  (``group`` = the size, ``lr_mult``, ``best``) and the fits use only the best trial per size
  (lowest final val loss; fit.json ``lr_trials`` lists them and warns when the best sits at
  the edge of the grid);
* ``mup``: μP (cgpt.train.plan.mup.apply_mup, base width ``plan.lr_base_width``) with
  ``plan.lr`` as the base LR, transferred to every width (hidden matrices at LR/m,
  m = n_embd / base width). Restriction: every width must be at least the base width (μP
  transfers the base model's tuning to wider models, not narrower ones).

Warmup: the planner's rule (375M tokens, capped at 20% of the steps, which is what every
small point gets) unless ``plan.warmup_tokens_per_param`` sets warmup tokens = k × params
(warmup proportional to model size; Porian et al. 2024, arXiv 2406.19146, name a warmup too
long for small models as one cause of the Kaplan/Chinchilla discrepancy; k = 1 is cgpt's
choice, not a constant read from the paper). Batch: ``plan.global_batch_seqs``, or, when it
is left out, the batch law of ``plan.recipe`` (``deepseek``: DeepSeek LLM's
B_opt = 0.2920·C^0.3271 tokens, docs/REFERENCE.md, Related scaling laws).

Resumable: a point whose run folder has ``summary.json`` with status ``completed`` is
skipped; a point with a run folder but no completed summary (killed, preempted, stopped) is
continued with ``--resume`` from its newest checkpoint; a failed point (it diverged or
crashed) is recorded with its reason and skipped on later runs unless ``--retry-failed``.
If the data folder is missing and the sweep has ``data.prepare``, the sweep trains the
tokenizer and prepares the data itself first (``cgpt tokenizer train`` + ``cgpt prepare``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cgpt.model.errors import CgptError, ConfigError
from cgpt.model.sizes import flops_per_token_algorithmic, num_non_embedding_params, num_params
from cgpt.train.config import (
    RunConfig,
    RuntimeSection,
    config_diff,
    format_validation_error,
    read_yaml,
    write_text_atomic,
)
from cgpt.train.loop.metrics import read_metrics

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
    recipe: Literal["cerebras", "deepseek"] = "cerebras"  # batch law when no global_batch_seqs
    warmup_tokens_per_param: float | None = Field(None, gt=0)  # warmup tokens = k × params
    lr: float = Field(gt=0)  # peak LR at lr_base_width (lr: mup: the μP base LR)
    lr_base_width: int = Field(64, gt=0)
    lr_width_exponent: float = 0.0  # lr × (lr_base_width / n_embd)^exponent (1.0 = μP-like)
    min_steps: int = Field(10, gt=0)  # refuse points that would train for fewer steps


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
    lr_grid: list[float] | None = None  # lr: tuned: multipliers of each size's LR
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
            if self.lr != "tuned":
                raise ValueError("lr_grid goes with lr: tuned")
            if not self.lr_grid or any(not (m > 0 and math.isfinite(m)) for m in self.lr_grid):
                raise ValueError(f"lr_grid must list positive multipliers, got {self.lr_grid}")
            if len(set(self.lr_grid)) != len(self.lr_grid):
                raise ValueError(f"lr_grid lists a multiplier twice: {self.lr_grid}")
        if self.lr == "mup":
            own = [s for s in (self.sizes or []) + (self.isoflop.sizes if self.isoflop else [])]
            if any(s.lr is not None for s in own):
                raise ValueError("lr: mup transfers plan.lr to every size; remove the sizes' lr")
        if self.plan.global_batch_seqs is None and self.plan.recipe == "cerebras":
            raise ValueError(
                "plan.global_batch_seqs is missing: give it, or set plan.recipe: deepseek "
                "for DeepSeek LLM's batch law (the Cerebras batch fit starts at 111M)"
            )
        return self

    @property
    def grid(self) -> list[float]:
        """The LR multipliers each size runs at (one, 1.0, unless lr: tuned)."""
        return (self.lr_grid or list(DEFAULT_LR_GRID)) if self.lr == "tuned" else [1.0]

    @property
    def kind(self) -> Literal["tokens_per_param", "isoflop"]:
        return "isoflop" if self.isoflop is not None else "tokens_per_param"


@dataclass
class Point:
    name: str
    cfg: RunConfig
    budget: float | None = None
    group: str | None = None  # lr: tuned: the size (and budget) this LR trial belongs to
    lr_mult: float | None = None


# ---- loading ------------------------------------------------------------------------------


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


# ---- data ---------------------------------------------------------------------------------


def tokenizer_dir(sweep: SweepConfig) -> str | None:
    if sweep.data.tokenizer:
        return sweep.data.tokenizer
    return sweep.data.path.rstrip("/") + "-tokenizer" if sweep.data.prepare else None


def _missing_data(sweep: SweepConfig) -> CgptError:
    return CgptError(
        f"data folder {sweep.data.path!r} not found; create it with `cgpt prepare` "
        "or add data.prepare (source, vocab_size) to the sweep file"
    )


def ensure_data(sweep: SweepConfig, log=print):
    """Open the sweep's data folder, preparing it first when missing and data.prepare says how."""
    from cgpt.train.data.shards import open_token_data

    path = Path(sweep.data.path)
    if not (path / "meta.json").is_file():
        spec = sweep.data.prepare
        if spec is None:
            raise _missing_data(sweep)
        from cgpt.train.data.prepare import prepare
        from cgpt.train.data.tokenizer import train_tokenizer

        tok = Path(tokenizer_dir(sweep))
        if not tok.is_dir():
            log(
                f"training a {spec.vocab_size}-token sentencepiece tokenizer on "
                f"{spec.source!r} -> {tok}"
            )
            train_tokenizer(
                spec.source, spec.vocab_size, tok, seed=spec.seed, max_docs=spec.max_docs
            )
        log(f"preparing {spec.source!r} -> {path}")
        prepare(spec.source, tok, path, val_fraction=spec.val_fraction, max_docs=spec.max_docs)
    return open_token_data(path, verify="size")


def dry_run_vocab(sweep: SweepConfig, log=print) -> int:
    """What :func:`ensure_data` would do, said and not done (a dry run writes nothing); the
    vocab size the points will have."""
    from cgpt.train.data.shards import open_token_data

    path = Path(sweep.data.path)
    if (path / "meta.json").is_file():
        data = open_token_data(path, verify="size")
        log(
            f"data: {path} ({data.meta['splits']['train']['tokens']:,} train tokens, "
            f"vocab {data.vocab_size})"
        )
        return data.vocab_size
    spec = sweep.data.prepare
    if spec is None:
        raise _missing_data(sweep)
    tok = Path(tokenizer_dir(sweep) or "")  # set: data.prepare is given
    if tok.is_dir():
        from cgpt.train.data.tokenizer import load_tokenizer

        vocab = load_tokenizer(tok).vocab_size
        log(f"would use the existing tokenizer {tok} ({vocab} tokens)")
    else:
        vocab = spec.vocab_size
        log(
            f"would train a {spec.vocab_size}-token sentencepiece tokenizer on {spec.source!r} "
            f"-> {tok}"
        )
    log(
        f"would prepare the data: {spec.source!r} -> {path} (val fraction "
        f"{spec.val_fraction}{f', first {spec.max_docs} documents' if spec.max_docs else ''})"
    )
    return vocab


def data_id(data) -> str:
    """Identity of a data folder's contents and tokenizer (shard checksums + fingerprint)."""
    meta = data.meta
    parts = [str(meta.get("vocab_size")), str(data.fingerprint)]
    for split in sorted(meta.get("splits", {})):
        parts += [f["sha256"] for f in meta["splits"][split].get("files", [])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# ---- planning the points ------------------------------------------------------------------


def _lr(sweep: SweepConfig, size: SizeSpec) -> float:
    if size.lr is not None:
        return size.lr
    p = sweep.plan
    return p.lr * (p.lr_base_width / size.n_embd) ** p.lr_width_exponent


def _sizes(sweep: SweepConfig, vocab: int) -> list[SizeSpec]:
    if sweep.isoflop is not None:
        return list(sweep.isoflop.sizes)
    sizes = list(sweep.sizes or [])
    if sweep.params:
        from cgpt.train.plan.planner import shape_for_params

        for n in sweep.params:
            layers, width, heads = shape_for_params(n, vocab, sweep.model.seq_len)
            sizes.append(SizeSpec(n_layer=layers, n_embd=width, n_head=heads))
    return sizes


def _point(
    sweep: SweepConfig,
    size: SizeSpec,
    vocab: int,
    tpp: float,
    name: str,
    out: Path,
    tok: str | None,
    lr_mult: float = 1.0,
) -> RunConfig:
    from cgpt.train.plan.planner import plan_for_shape

    try:
        plan = plan_for_shape(
            size.n_layer,
            size.n_embd,
            size.n_head,
            tokens_per_param=tpp,
            seq_len=sweep.model.seq_len,
            vocab_size=vocab,
            name=name,
            global_batch_seqs=sweep.plan.global_batch_seqs,
            lr=(sweep.plan.lr if sweep.lr == "mup" else _lr(sweep, size)) * lr_mult,
            recipe=sweep.plan.recipe,
        )
        if sweep.plan.warmup_tokens_per_param is not None:
            warm = math.ceil(
                sweep.plan.warmup_tokens_per_param * plan.params / plan.global_batch_tokens
            )
            warm = min(max(warm, 1), plan.steps - 1)
            plan = plan.replace(warmup_steps=warm, decay_steps=plan.steps - warm)
        if sweep.lr == "mup":
            from cgpt.train.plan.mup import apply_mup

            lr = plan.lr
            plan = apply_mup(plan, base_width=sweep.plan.lr_base_width)
            plan = plan.replace(name=name, lr=lr, min_lr=float(f"{lr * 0.1:.3g}"))
    except CgptError as e:
        raise CgptError(f"point {name}: {e}") from None
    if plan.steps < sweep.plan.min_steps:
        raise CgptError(
            f"point {name} would train for only {plan.steps} steps of "
            f"{plan.global_batch_tokens:,} tokens (plan.min_steps is "
            f"{sweep.plan.min_steps}); raise its budget/tokens_per_param, lower "
            "plan.global_batch_seqs or drop the size"
        )
    runtime = {
        "wandb": "off",
        "export_hf": False,
        **sweep.runtime,
        "out_dir": str((out / "runs" / name).resolve()),
    }
    mb = runtime.get("micro_batch")
    if sweep.plan.global_batch_seqs is None and mb and plan.global_batch_seqs % mb:
        # a batch from a law: the largest micro-batch <= the asked one that divides it
        runtime["micro_batch"] = max(b for b in range(1, mb + 1) if plan.global_batch_seqs % b == 0)
    return plan.to_run_config(
        str(Path(sweep.data.path).resolve()), str(Path(tok).resolve()) if tok else None, runtime
    )


def plan_points(sweep: SweepConfig, vocab: int) -> list[Point]:
    """One run config per point, in the order they run (small to large)."""
    out, tok = Path(sweep.out_dir), tokenizer_dir(sweep)
    vocab = sweep.model.vocab_size or vocab
    points = []
    tuned = sweep.lr == "tuned"
    for size in _sizes(sweep, vocab):
        shape = f"L{size.n_layer}-d{size.n_embd}-h{size.n_head}"
        targets: list[tuple[str, float, float | None]] = []  # (name, tokens/param, budget)
        if sweep.isoflop is None:
            targets.append((shape, sweep.tokens_per_param, None))
        else:
            cfg_probe = _probe(size, vocab, sweep.model.seq_len)
            for c in sweep.isoflop.budgets:
                tokens = c / flops_per_token_algorithmic(cfg_probe, sweep.model.seq_len)
                name = f"C{c:.2e}-{shape}".replace("+", "")
                targets.append((name, tokens / num_params(cfg_probe), float(c)))
        for group, tpp, budget in targets:
            for m in sweep.grid:
                name = f"{group}-lrx{m:g}" if tuned else group
                cfg = _point(sweep, size, vocab, tpp, name, out, tok, lr_mult=m)
                points.append(
                    Point(
                        name,
                        cfg,
                        budget=budget,
                        group=group if tuned else None,
                        lr_mult=m if tuned else None,
                    )
                )
    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sweep lists the same size twice: {', '.join(dup)}")
    return sorted(points, key=lambda p: (p.budget or 0, p.cfg.plan.params, p.lr_mult or 0))


def _probe(size: SizeSpec, vocab: int, seq_len: int):
    from cgpt.model.config import GPTConfig

    return GPTConfig(
        n_layer=size.n_layer,
        n_embd=size.n_embd,
        n_head=size.n_head,
        n_positions=seq_len,
        vocab_size=vocab,
    )


# ---- results ------------------------------------------------------------------------------


def write_results(out: Path, records: list[dict]) -> None:
    records = mark_best(records)
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _ok(r: dict) -> bool:
    v = r.get("val_loss")
    return r.get("status") == "ok" and v is not None and math.isfinite(v)


def mark_best(records: list[dict]) -> list[dict]:
    """LR trials (records with a ``group``): ``best`` is True on the lowest finite final val
    loss of each group, False on the others (records without a group are left alone)."""
    best: dict[str, dict] = {}
    for r in records:
        g = r.get("group")
        if g is not None and _ok(r) and (g not in best or r["val_loss"] < best[g]["val_loss"]):
            best[g] = r
    return [
        {**r, "best": best.get(r["group"]) is r} if r.get("group") is not None else r
        for r in records
    ]


def best_trials(records: list[dict]) -> tuple[list[dict], dict]:
    """The records the fits use (per LR-trial group only its best trial, or its failures when
    none finished) and a summary of the trials per group (fit.json ``lr_trials``)."""
    records = mark_best(records)
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("group") is not None:
            groups.setdefault(r["group"], []).append(r)
    keep = [
        r
        for r in records
        if r.get("group") is None or r["best"] or not any(_ok(q) for q in groups[r["group"]])
    ]
    summary, warnings = {}, []
    for g, trials in groups.items():
        trials = sorted(trials, key=lambda r: r.get("lr_mult") or 0)
        best = next((r for r in trials if r["best"]), None)
        summary[g] = {
            "best": best["name"] if best else None,
            "best_lr": best["lr"] if best else None,
            "best_lr_mult": best["lr_mult"] if best else None,
            "trials": [
                {
                    "name": r["name"],
                    "lr_mult": r.get("lr_mult"),
                    "lr": r.get("lr"),
                    "status": r.get("status"),
                    "val_loss": r.get("val_loss"),
                }  # fmt: skip
                for r in trials
            ],
        }
        mults = [r.get("lr_mult") for r in trials]
        if best and len(mults) > 1 and best["lr_mult"] in (min(mults), max(mults)):
            edge = "largest" if best["lr_mult"] == max(mults) else "smallest"
            warnings.append(
                f"{g}: the best LR (x{best['lr_mult']:g}) is the {edge} of lr_grid; the optimum "
                "may lie outside it: widen lr_grid"
            )
    return keep, {"groups": summary, "warnings": warnings} if groups else {}


def _record(
    p: Point,
    status: str,
    did: str,
    summary: dict | None = None,
    reason: str | None = None,
    wall_s: float | None = None,
) -> dict:
    m = p.cfg.model
    summary = summary or {}
    tokens = int(summary.get("tokens") or 0) or p.cfg.plan.tokens
    val = summary.get("val_loss")
    return {
        "name": p.name,
        "status": status,
        "budget": p.budget,
        "n_layer": m.n_layer,
        "n_embd": m.n_embd,
        "n_head": m.n_head,
        "params": num_params(m),
        "non_embedding_params": num_non_embedding_params(m),
        "tokens": tokens,
        "tokens_per_param": tokens / num_params(m),
        "flops": float(flops_per_token_algorithmic(m, p.cfg.plan.seq_len) * tokens),
        "steps": summary.get("steps"),
        "lr": p.cfg.plan.lr,
        "lr_mode": "mup" if p.cfg.model.mup is not None else ("tuned" if p.group else "fixed"),
        "group": p.group,
        "lr_mult": p.lr_mult,
        "global_batch_seqs": p.cfg.plan.global_batch_seqs,
        "warmup_steps": p.cfg.plan.warmup_steps,
        "val_loss": float(val) if val is not None else None,
        "train_loss": summary.get("loss"),
        "wall_s": wall_s,
        "run_dir": p.cfg.runtime.out_dir,
        "data_id": did,
        "reason": reason,
    }


def _summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _failure_reason(log_path: Path, rc: int) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    tail = errors[-1] if errors else " | ".join(lines[-3:])
    return f"exit code {rc}: {tail[-600:]}" if tail else f"exit code {rc} (no output)"


def _child_env() -> dict:
    env = dict(os.environ)
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        env.pop(key, None)  # each point is its own process group
    return env


def run_point(p: Point, out: Path, did: str, log=print) -> dict:
    """Train one point in a subprocess (resuming its run folder if there is one)."""
    cfg_path = out / "configs" / f"{p.name}.yaml"
    p.cfg.save(cfg_path)
    run_dir = Path(p.cfg.runtime.out_dir)
    resume = (run_dir / "config.yaml").is_file()
    cmd = [sys.executable, "-m", "cgpt.train", str(cfg_path)] + (["--resume"] if resume else [])
    log_path = out / "logs" / f"{p.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_child_env())
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint
            proc.wait()
            raise
    wall = round(time.time() - t0, 2)
    summary = _summary(run_dir)
    if rc == 0 and summary and summary.get("status") == "completed":
        return _record(p, "ok", did, summary, wall_s=wall)
    if rc == 0 and summary:
        return _record(
            p,
            "interrupted",
            did,
            summary,
            wall_s=wall,
            reason=f"run {summary.get('status')} at step {summary.get('steps')}; "
            "it resumes from its checkpoint on the next `cgpt sweep`",
        )
    if rc < 0:
        return _record(
            p,
            "interrupted",
            did,
            wall_s=wall,
            reason=f"killed by signal {-rc}; resumes on the next `cgpt sweep`",
        )
    return _record(p, "failed", did, reason=_failure_reason(log_path, rc), wall_s=wall)


def _interval_text(interval) -> str:
    return f" (95% interval {interval[0]:.1f}-{interval[1]:.1f})" if interval else ""


def _check_unchanged(out: Path, points: list[Point]) -> None:
    """A sweep folder's finished points must still match the sweep file: else refuse."""
    for p in points:
        saved = out / "configs" / f"{p.name}.yaml"
        if not saved.is_file():
            continue
        old = yaml.safe_load(saved.read_text()) or {}
        new = p.cfg.to_dict()
        diff = config_diff(old, new)
        if diff:
            raise CgptError(
                f"sweep folder {str(out)!r} already holds point {p.name} with a "
                f"different {', '.join(diff)}; restore the sweep file, or set a new "
                "out_dir for the changed sweep"
            )


def run_sweep(
    path: str | os.PathLike,
    *,
    retry_failed: bool = False,
    dry_run: bool = False,
    fit: bool = True,
    log=print,
) -> dict:
    """Run (or continue) every point of a sweep, then fit and plot. Returns
    {"out_dir", "results": [...], "fit": dict | None, "fit_error": str | None}."""
    sweep = load_sweep(path)
    out = Path(sweep.out_dir)
    if dry_run:  # says what would happen and writes nothing: no tokenizer, data or sweep folder
        points = plan_points(sweep, dry_run_vocab(sweep, log))
        for p in points:
            pl = p.cfg.plan
            log(
                f"{p.name:28s} params {pl.params:>11,}  tokens {pl.tokens:>12,}  steps "
                f"{pl.steps:>6,}  lr {pl.lr:.2e}  FLOPs {pl.train_flops:.3e}"
            )
        log(
            f"dry run: nothing written; a real run trains these {len(points)} points into "
            f"{out}/runs/ and writes {out}/results.jsonl"
        )
        return {"out_dir": str(out), "results": [], "fit": None, "fit_error": None}
    data = ensure_data(sweep, log)
    did = data_id(data)
    points = plan_points(sweep, data.vocab_size)
    _check_unchanged(out, points)
    old = {r["name"]: r for r in read_metrics(out / "results.jsonl")}
    records = {p.name: old[p.name] for p in points if p.name in old}
    stale = [n for n, r in records.items() if r.get("status") == "ok" and r.get("data_id") != did]
    if stale:
        raise CgptError(
            f"the data in {sweep.data.path!r} changed since {', '.join(stale[:3])} "
            "trained on it (different shards or tokenizer); their losses would not be "
            "comparable with new points: restore the data or use a new out_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / "sweep.yaml",
        yaml.safe_dump(
            {**sweep.model_dump(mode="json"), "kind": sweep.kind, "data_id": did}, sort_keys=False
        ),
    )
    for i, p in enumerate(points, 1):
        rec, head = records.get(p.name), f"[{i}/{len(points)}] {p.name}"
        done = _summary(Path(p.cfg.runtime.out_dir)) or {}
        if rec and rec["status"] == "ok" and done.get("status") == "completed":
            log(f"{head}: finished earlier (val_loss {rec['val_loss']:.4f}), skipped")
            continue
        if rec and rec["status"] == "failed" and not retry_failed:
            log(f"{head}: failed earlier ({rec['reason']}), skipped; --retry-failed reruns it")
            continue
        log(
            f"{head}: {p.cfg.plan.params:,} params, {p.cfg.plan.tokens:,} tokens, "
            f"{p.cfg.plan.steps} steps ..."
        )
        rec = run_point(p, out, did, log)
        records[p.name] = rec
        write_results(out, [records[q.name] for q in points if q.name in records])
        msg = (
            f"val_loss {rec['val_loss']:.4f}"
            if rec["status"] == "ok"
            else f"{rec['status'].upper()}: {rec['reason']}"
        )
        log(f"{head}: {msg} ({rec['wall_s']:.0f} s)")
        if rec["status"] == "interrupted":
            raise CgptError(
                f"point {p.name} was interrupted; run `cgpt sweep {path}` again to "
                "continue it from its checkpoint"
            )
    result = {
        "out_dir": str(out),
        "results": [records[p.name] for p in points],
        "fit": None,
        "fit_error": None,
    }
    if fit:
        from cgpt.train.scaling.fit import FitError

        try:
            result["fit"] = fit_sweep_dir(out, log=log)
        except FitError as e:
            result["fit_error"] = str(e)
            log(f"fit: {e}")
    return result


# ---- fitting a sweep folder ---------------------------------------------------------------


def _check_same_data(records: list[dict]) -> None:
    ids = {}
    for r in records:
        if r.get("status") == "ok":
            ids.setdefault(r.get("data_id"), []).append(r["name"])
    if len(ids) > 1:
        groups = "; ".join(
            f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in ids.items()
        )
        raise CgptError(
            "the sweep's points were trained on different data or tokenizers "
            f"({groups}); losses on different data are not comparable, so no law is "
            "fitted: rerun the odd points on the sweep's data, or split the sweep"
        )


def fit_sweep_dir(out: str | os.PathLike, *, n_boot: int = 500, log=print) -> dict:
    """Fit the results in a sweep folder; write fit.json, scaling.png (and isoflop.png)."""
    from cgpt.train.scaling.fit import FitError, fit_results
    from cgpt.train.scaling.plots import plot_isoflop, plot_scaling

    out = Path(out)
    if not (out / "sweep.yaml").is_file():
        raise CgptError(
            f"{str(out)!r} is not a sweep folder (no sweep.yaml); run `cgpt sweep SWEEP.yaml` first"
        )
    meta = yaml.safe_load((out / "sweep.yaml").read_text()) or {}
    records = read_metrics(out / "results.jsonl")
    if not records:
        raise CgptError(f"{str(out)!r} has no results yet; run `cgpt sweep SWEEP.yaml`")
    _check_same_data(records)
    records, trials = best_trials(records)
    fit = fit_results(
        records,
        kind=meta.get("kind", "tokens_per_param"),
        tokens_per_param=meta.get("tokens_per_param"),
        n_boot=n_boot,
    )
    fit["sweep"] = meta.get("name")
    if trials:
        fit["lr_trials"] = trials
        fit["warnings"] += trials["warnings"]
    write_text_atomic(out / "fit.json", json.dumps(fit, indent=1, default=float) + "\n")
    points = [
        {**r, "loss": r["val_loss"]}
        for r in records
        if r.get("status") == "ok"
        and r.get("val_loss") is not None
        and math.isfinite(r["val_loss"])
    ]
    title = f"{meta.get('name', out.name)}: loss vs compute"
    plot_scaling(points, fit, out / "scaling.png", title=title)
    if fit["kind"] == "isoflop":
        plot_isoflop(points, fit, out / "isoflop.png", title=f"{meta.get('name')}: IsoFLOP")
    for line in summarize_fit(fit):
        log(line)
    if fit.get("loss_law") is None:
        raise FitError(fit.get("loss_law_error", "no loss law fitted"))
    return fit


def summarize_fit(fit: dict) -> list[str]:
    lines = []
    law = fit.get("loss_law")
    if law:
        r2 = f"{law['r2']:.4f}" if law.get("r2") is not None else "n/a"
        lines.append(
            f"loss law: L(C) = (C / {law['a']:.4g})^-{law['b']:.4f} + {law['c']:.4f}  "
            f"(R² {r2}, RMSE {law['rmse']:.4f}, {law['n_points']} frontier points, "
            f"loss {'falls monotonically' if law['monotonic'] else 'NOT monotonic'} "
            "with compute)"
        )
    pred = fit.get("prediction") or {}
    llo, loo = pred.get("leave_largest_out"), pred.get("leave_one_out") or {}
    if llo:
        pi = llo.get("pi95")
        lines.append(
            f"leave-largest-out: fitted on {llo['fitted_on']} points, predicts "
            f"{llo['predicted']:.4f} at C = {llo['flops']:.3g} "
            + (f"(95% interval {pi[0]:.4f}-{pi[1]:.4f}) " if pi else "(no interval) ")
            + f"vs measured {llo['loss']:.4f}: error {100 * llo['rel_error']:+.2f}%"
        )
        if loo.get("mean_abs_error") is not None:
            lines.append(
                f"leave-one-out: mean |error| {loo['mean_abs_error']:.4f}, max "
                f"{100 * loo['max_abs_rel_error']:.2f}%, inside the 95% interval: "
                f"{loo['inside_pi95'] or 'n/a'}"
            )
    elif pred.get("skipped"):
        lines.append(f"held-out prediction: {pred['skipped']}")
    iso = fit.get("isoflop") or {}
    if "alpha" in iso:
        lines.append(
            f"IsoFLOP: N_opt ∝ C^{iso['alpha']:.3f}, D_opt ∝ C^{iso['beta']:.3f}, "
            f"tokens/param at the optimum ≈ {iso['tokens_per_param']:.1f}"
            + _interval_text((iso.get("tokens_per_param_ci95") or {}).get("interval"))
        )
    ch = fit.get("chinchilla") or {}
    if "E" in ch:
        lines.append(
            f"Chinchilla: L(N, D) = {ch['E']:.3f} + {ch['A']:.4g}/N^{ch['alpha']:.3f} + "
            f"{ch['B']:.4g}/D^{ch['beta']:.3f} (R² {ch['r2']:.4f})"
        )
    for g, t in ((fit.get("lr_trials") or {}).get("groups") or {}).items():
        tried = ", ".join(
            f"x{r['lr_mult']:g}: " + (f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-")
            for r in t["trials"]
        )
        best = f"best x{t['best_lr_mult']:g} (lr {t['best_lr']:.3g})" if t["best"] else "none ok"
        lines.append(f"lr trials {g}: {tried}; {best}")
    for w in fit.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines
