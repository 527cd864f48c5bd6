"""The Chinchilla planner: a size or a budget -> a complete training recipe (pure functions).

``plan_published("1.3B")`` is the published recipe (docs/REFERENCE.md, Training recipe, via
cgpt.train.plan.rules.RECIPES); ``plan_for_params``, ``plan_for_shape``, ``plan_for_flops``
and ``plan_for_gpu_hours`` apply the rules fitted to that family (documented in plan_rules).
``with_cluster`` adds the batch split, memory per GPU and wall-clock for a GPU count.
A Plan is frozen: ``plan.replace(lr=...)`` gives a changed copy (cgpt.train.plan.mup does).

    python -m cgpt.train.plan.planner --write-configs configs/  # regenerate the shipped configs
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.sizes import (
    GPT2_VOCAB,
    PUBLISHED,
    canonical_name,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_non_embedding_params,
    num_params,
)
from cgpt.train.cli_args import data_spec
from cgpt.train.config import BatchPhase, DataSection, PlanSection, RunConfig, RuntimeSection
from cgpt.train.loop.schedule import cooldown_steps
from cgpt.train.plan import rules as R
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.devices import Device
from cgpt.train.plan.memory import MemoryEstimate, fit_micro_batch


@dataclass(frozen=True)
class Cluster:
    """Where and how a plan runs: the split, the memory it needs, the time it takes."""

    gpus: int
    device: Device
    zero_stage: int
    mfu: float
    micro_batch: int
    grad_accum: tuple[int, ...]  # per batch phase
    activation_checkpointing: bool
    memory: MemoryEstimate
    hours: float  # wall clock
    gpu_hours: float


# Plan fields that live in the run config's plan section (PlanSection, the one schema of a
# plan's numbers); the rest of a Plan says where the plan came from and where it runs.
_DERIVED = ("params", "tokens_per_param", "train_flops", "predicted_loss")


@dataclass(frozen=True)
class Plan:
    """The planner's answer: the plan section of a run config (its numbers: tokens, steps,
    batch phases, LR schedule, AdamW; one schema, :class:`PlanSection`), the model it trains,
    the loss law behind its prediction, its provenance and, optionally, a cluster fit.

    Reading ``plan.lr`` (or any other PlanSection field) reads the section. Build one with
    :func:`make_plan`; change one with :meth:`replace`, which recomputes the derived numbers.
    """

    section: PlanSection
    model: GPTConfig
    law: R.ScalingLaw = R.ScalingLaw()
    source: str = "rules"  # "published" or "rules"
    target_tokens_per_param: float = R.TOKENS_PER_PARAM  # what was asked (rules), or D/N
    notes: tuple[str, ...] = ()
    cluster: Cluster | None = None
    extra: dict = field(default_factory=dict)  # free slot for extensions (e.g. μP notes)

    def __getattr__(self, name: str):
        if name in PlanSection.model_fields or name == "global_batch_tokens":
            return getattr(self.section, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def replace(self, **changes) -> Plan:
        """A new Plan with fields of the plan or of its section changed."""
        own = {k: changes.pop(k) for k in list(changes) if k in self.__dataclass_fields__}
        model = own.pop("model", self.model)
        law = own.pop("law", self.law)
        fields_ = {k: v for k, v in self.section.model_dump().items() if k not in _DERIVED}
        fields_["batch_schedule"] = self.section.batch_schedule
        fields_.update(changes)
        return replace(self, section=_section(model, law, fields_), model=model, law=law, **own)

    # ---- derived numbers -------------------------------------------------------------
    @property
    def params(self) -> int:
        return num_params(self.model)

    @property
    def train_flops(self) -> int:
        """Paper's algorithmic convention (docs/REFERENCE.md, FLOP conventions): the loss
        law's input."""
        return flops_per_token_algorithmic(self.model, self.seq_len) * self.tokens

    @property
    def train_flops_mfu(self) -> int:
        """6N + 12·L·T·d per token: the convention for hardware time and MFU."""
        return flops_per_token_mfu(self.model, self.seq_len) * self.tokens

    @property
    def predicted_loss(self) -> float:
        return self.law.loss(self.train_flops)

    def phases(self) -> list[BatchPhase]:
        return self.section.phases()

    # ---- outputs ---------------------------------------------------------------------
    def plan_section(self) -> PlanSection:
        return self.section

    def to_run_config(
        self, data_path: str, tokenizer: str | None = None, runtime: dict | None = None
    ) -> RunConfig:
        rt: dict = {"out_dir": f"runs/{slug(self.name)}"}
        if self.cluster:
            rt.update(
                micro_batch=self.cluster.micro_batch,
                zero_stage=self.cluster.zero_stage,
                activation_checkpointing=self.cluster.activation_checkpointing,
            )
        rt.update(runtime or {})
        return RunConfig(
            model=self.model,
            data=DataSection(**data_spec(data_path), tokenizer=tokenizer),
            plan=self.section,
            runtime=RuntimeSection(**rt),
        )

    def to_json(self) -> dict:
        m = self.model
        d = {
            "name": self.name,
            "source": self.source,
            "params": self.params,
            "n_layer": m.n_layer,
            "n_embd": m.n_embd,
            "n_head": m.n_head,
            "d_head": m.head_dim,
            "d_ffn": m.n_inner,
            "vocab_size": m.vocab_size,
            "seq_len": self.seq_len,
            "out_init_std": m.out_init_std,
            "tokens": self.tokens,
            "tokens_per_param": self.tokens / self.params,
            "steps": self.steps,
            "global_batch_seqs": self.global_batch_seqs,
            "global_batch_tokens": self.global_batch_tokens,
            "lr": self.lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "decay_steps": self.decay_steps,
            **(
                {
                    "cooldown_fraction": self.cooldown_fraction,
                    "cooldown_steps": cooldown_steps(self.phases()[0]),
                }
                if self.decay == "wsd"
                else {}
            ),
            "adam_betas": list(self.adam_betas),
            "adam_eps": self.adam_eps,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "batch_schedule": (
                [p.model_dump() for p in self.batch_schedule] if self.batch_schedule else None
            ),
            "train_flops": float(self.train_flops),
            "train_flops_mfu": float(self.train_flops_mfu),
            "predicted_loss": self.predicted_loss,
            "predicted_loss_pi95": (
                list(self.law.interval(self.train_flops) or ()) or None if self.law.draws else None
            ),
            "loss_law_check": self.law.check or None,
            "loss_law": {
                "form": "paper",
                "a": self.law.a,
                "b": self.law.b,
                "c": self.law.c,
                "source": self.law.source,
            },
            "mup": m.to_dict().get("mup"),
            "notes": list(self.notes),
            **self.extra,
        }
        c = self.cluster
        if c:
            d.update(
                gpus=c.gpus,
                gpu=c.device.name,
                zero_stage=c.zero_stage,
                mfu=c.mfu,
                micro_batch=c.micro_batch,
                grad_accum=c.grad_accum[0],
                grad_accum_per_phase=list(c.grad_accum),
                activation_checkpointing=c.activation_checkpointing,
                memory_per_gpu_bytes=c.memory.total,
                memory=c.memory.to_dict(),
                device_memory_bytes=c.device.memory_bytes,
                hours=c.hours,
                gpu_hours=c.gpu_hours,
            )
        return d


def _section(model: GPTConfig, law: R.ScalingLaw, fields_: dict) -> PlanSection:
    """The plan section with its derived numbers (params, D/N, FLOPs, predicted loss)."""
    params = num_params(model)
    flops = flops_per_token_algorithmic(model, fields_["seq_len"]) * fields_["tokens"]
    phases = fields_.get("batch_schedule")
    return PlanSection(
        **{**fields_, "batch_schedule": list(phases) if phases else None},
        params=params,
        tokens_per_param=round(fields_["tokens"] / params, 4),
        train_flops=float(flops),
        predicted_loss=round(law.loss(flops), 4),
    )


def make_plan(
    name: str,
    model: GPTConfig,
    *,
    law: R.ScalingLaw | None = None,
    source: str = "rules",
    target_tokens_per_param: float | None = None,
    notes: tuple[str, ...] = (),
    **section_fields,
) -> Plan:
    """A Plan from the plan-section numbers (PlanSection's fields and defaults)."""
    law = law or R.ScalingLaw()
    section = _section(model, law, {"name": name, **section_fields})
    tpp = (
        target_tokens_per_param
        if target_tokens_per_param is not None
        else section_fields["tokens"] / num_params(model)
    )
    return Plan(
        section=section,
        model=model,
        law=law,
        source=source,
        target_tokens_per_param=tpp,
        notes=notes,
    )


def slug(name: str) -> str:
    return ("cerebras-gpt-" + name.lower()) if name in PUBLISHED else name.lower()


# ---- published recipes ---------------------------------------------------------------------
def plan_published(name: str, law: R.ScalingLaw | None = None) -> Plan:
    """The published recipe of a Cerebras-GPT size (docs/REFERENCE.md, Training recipe)."""
    key = canonical_name(name)
    r = R.RECIPES[key]
    cfg = GPTConfig.from_name(key)
    phases = None
    if r.phases:
        phases = tuple(
            BatchPhase(
                global_batch_seqs=p.global_batch_seqs,
                steps=p.steps,
                schedule_start_step=p.schedule_start_step,
                warmup_steps=p.warmup_steps,
                decay_steps=p.decay_steps,
                decay=r.decay,
            )
            for p in r.phases
        )
        tokens = sum(p.steps * p.global_batch_seqs for p in r.phases) * R.SEQ_LEN
        decay_steps = r.phases[0].decay_steps
    else:
        tokens = r.steps * r.global_batch_seqs * R.SEQ_LEN
        decay_steps = r.steps - r.warmup_steps  # docs/REFERENCE.md, Training recipe
    notes = tuple(f"paper vs rules: {msg}" for (n, _), msg in R.DEVIATIONS.items() if n == key)
    return make_plan(
        key,
        cfg,
        seq_len=R.SEQ_LEN,
        tokens=tokens,
        steps=r.steps,
        global_batch_seqs=r.global_batch_seqs,
        lr=r.lr,
        min_lr=round(r.lr * R.MIN_LR_FRACTION, 12),
        warmup_steps=r.warmup_steps,
        decay=r.decay,
        decay_steps=decay_steps,
        adam_eps=r.adam_eps,
        batch_schedule=phases,
        law=law,
        source="published",
        notes=notes,
    )


# ---- rules -------------------------------------------------------------------------------
def _check_positive(value, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CgptError(f"{what} must be a positive number, got {value!r}")
    return value


def plan_for_shape(
    n_layer: int,
    n_embd: int,
    n_head: int | None = None,
    *,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    name: str | None = None,
    fit: R.Fit | None = None,
    global_batch_seqs: int | None = None,
    lr: float | None = None,
    decay: str | None = None,
    cooldown_fraction: float | None = None,
    recipe: str = "cerebras",
    param_count: str = "total",
) -> Plan:
    """A model of this shape trained by the family's rules (plan_rules docstring).

    ``decay`` overrides the rule's linear/cosine choice ("wsd": warmup-stable-decay with a
    linear cooldown over the last ``cooldown_fraction`` of the steps, default 0.2;
    cgpt.train.loop.schedule). ``recipe`` picks the batch and LR laws: "cerebras" (the
    family's fits) or "deepseek" (DeepSeek LLM's B_opt(C), η_opt(C); cgpt.train.plan.rules).
    ``param_count`` is the N in tokens = tokens_per_param × N: "total" or "non-embedding"
    (Kaplan/DeepSeek); the Cerebras batch/LR fits always take the total count they were
    fitted to."""
    fit = fit or R.DEFAULT_FIT
    count = param_counter(param_count)
    check_recipe(recipe)
    if decay is not None and decay not in ("linear", "cosine", "wsd"):
        raise CgptError(f"decay must be linear, cosine or wsd, got {decay!r}")
    if cooldown_fraction is not None:
        if decay != "wsd":
            raise CgptError("a cooldown fraction needs the wsd schedule (--decay wsd)")
        if not (isinstance(cooldown_fraction, (int, float)) and 0 < cooldown_fraction <= 1):
            raise CgptError(f"the cooldown fraction must be in (0, 1], got {cooldown_fraction!r}")
    tpp = _check_positive(
        tokens_per_param if tokens_per_param is not None else fit.tokens_per_param,
        "tokens per parameter",
    )
    for what, v in (
        ("layers", n_layer),
        ("width", n_embd),
        ("seq_len", seq_len),
        ("vocab size", vocab_size),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise CgptError(f"{what} must be a positive integer, got {v!r}")
    n_head = n_head or R.n_head_rule(n_embd)
    probe = GPTConfig(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=seq_len, vocab_size=vocab_size
    )
    params = num_params(probe)
    counted = count(probe)
    if counted <= 0:
        raise CgptError(f"this shape has no {param_count} parameters to plan tokens for")
    cfg = replace(probe, out_init_std=R.out_init_std_rule(params, n_layer))
    target_tokens = tpp * counted
    recipe_notes: tuple[str, ...] = ()
    if recipe == "deepseek":
        m = R.deepseek_flops_per_token(n_layer, n_embd, seq_len)
        c_ds = m * target_tokens
        rule_batch = max(1, round(R.deepseek_batch_tokens(c_ds) / seq_len))
        rule_lr = float(f"{R.deepseek_lr(c_ds):.3g}")
        recipe_notes = (
            f"recipe deepseek (DeepSeek LLM, arXiv 2401.02954): C = M·D = {m:.4g} × "
            f"{target_tokens:.4g} = {c_ds:.4g} non-embedding FLOPs; B_opt = 0.2920·C^0.3271 = "
            f"{R.deepseek_batch_tokens(c_ds):,.0f} tokens -> {rule_batch} sequences; "
            f"η_opt = 0.3118·C^-0.1250 = {R.deepseek_lr(c_ds):.4g}",
        )
    else:
        rule_batch, rule_lr = R.batch_seqs_rule(params, seq_len), R.lr_rule(params)
    batch = global_batch_seqs or rule_batch
    batch_tokens = batch * seq_len
    steps = R.steps_rule(target_tokens, batch_tokens)
    if steps < 1:
        raise CgptError(
            f"{tpp:g} tokens/param × {counted:,} {param_count} params is less than one batch "
            f"of {batch_tokens:,} tokens; raise --tokens-per-param or lower the batch"
        )
    peak = lr or rule_lr
    warmup = R.warmup_rule(batch_tokens, steps)
    label = name or f"{_short(params)}-L{n_layer}-d{n_embd}"
    notes = tuple(
        f"published {p.name} shape; the paper's recipe differs: {msg}"
        for p in PUBLISHED.values()
        if (p.n_layer, p.n_embd) == (n_layer, n_embd)
        for (n, _), msg in R.DEVIATIONS.items()
        if n == p.name
    )
    plan = make_plan(
        label,
        cfg,
        seq_len=seq_len,
        tokens=steps * batch_tokens,
        steps=steps,
        global_batch_seqs=batch,
        lr=peak,
        min_lr=float(f"{peak * R.MIN_LR_FRACTION:.3g}"),
        warmup_steps=warmup,
        decay=decay or R.decay_rule(params),
        decay_steps=steps - warmup,
        cooldown_fraction=cooldown_fraction,
        adam_eps=R.adam_eps_rule(params),
        target_tokens_per_param=tpp,
        law=law or fit.law,
        source="rules",
        notes=notes + recipe_notes,
    )
    return replace(
        plan, extra={"recipe": recipe, "param_count": param_count, "counted_params": counted}
    )


PARAM_COUNTS = ("total", "non-embedding")


def param_counter(param_count: str):
    """The parameter count that N means: num_params or num_non_embedding_params."""
    if param_count == "total":
        return num_params
    if param_count == "non-embedding":
        return num_non_embedding_params
    raise CgptError(f"the parameter count must be total or non-embedding, got {param_count!r}")


def check_recipe(recipe: str) -> None:
    if recipe in R.UNVERIFIED_RECIPES:
        raise CgptError(R.UNVERIFIED_RECIPES[recipe])
    if recipe not in R.RECIPE_NAMES:
        raise CgptError(f"unknown recipe {recipe!r}; choose one of {', '.join(R.RECIPE_NAMES)}")


def _short(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def _continuous_params(d: float, vocab: int, seq_len: int, count=num_params) -> float:
    ns = SimpleNamespace(
        n_embd=d,
        n_layer=R.layers_for_width(d),
        vocab_size=vocab,
        n_positions=seq_len,
        n_inner=4 * d,
    )
    return count(ns)


def _bisect(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for increasing f (geometric bisection)."""
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return math.sqrt(lo * hi)


def shape_for_params(
    params: float,
    vocab_size: int = GPT2_VOCAB,
    seq_len: int = R.SEQ_LEN,
    param_count: str = "total",
) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) in the family's style with about `params` parameters
    (``param_count`` "total" or "non-embedding").

    Width from the interpolated depth/width curve, rounded to the d_head grid; depth the
    integer next to the curve that lands closest to `params`. Reproduces all seven shapes.
    """
    count = param_counter(param_count)
    smallest = _continuous_params(64, vocab_size, seq_len, count)
    if params < smallest:
        raise CgptError(
            f"{params:,.0f} parameters is below the smallest model in this family "
            f"(~{smallest:,.0f} at width 64 with vocab {vocab_size}); use "
            f"--layers/--width for tiny models"
        )
    d = _bisect(lambda x: _continuous_params(x, vocab_size, seq_len, count), params, 64, 1e6)
    best = None
    for grid_d in {
        max(64, math.floor(d / R.width_grid(d)) * R.width_grid(d)),
        math.ceil(d / R.width_grid(d)) * R.width_grid(d),
    }:
        curve = R.layers_for_width(grid_d)
        for layers in {max(1, math.floor(curve)), max(1, math.ceil(curve))}:
            n = count(
                SimpleNamespace(
                    n_embd=grid_d,
                    n_layer=layers,
                    vocab_size=vocab_size,
                    n_positions=seq_len,
                    n_inner=4 * grid_d,
                )
            )
            key = (abs(math.log(n / params)), abs(layers - curve))
            if best is None or key < best[0]:
                best = (key, layers, grid_d)
    _, layers, width = best
    return layers, width, R.n_head_rule(width)


def plan_for_params(
    params: float,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    fit: R.Fit | None = None,
    name: str | None = None,
    param_count: str = "total",
    **kw,
) -> Plan:
    """A compute-optimal plan for about `params` parameters (shape chosen by the rules)."""
    _check_positive(params, "parameter count")
    if tokens_per_param is not None:
        _check_positive(tokens_per_param, "tokens per parameter")
    layers, width, heads = shape_for_params(params, vocab_size, seq_len, param_count)
    return plan_for_shape(
        layers,
        width,
        heads,
        tokens_per_param=tokens_per_param,
        law=law,
        seq_len=seq_len,
        vocab_size=vocab_size,
        fit=fit,
        name=name,
        param_count=param_count,
        **kw,
    )


def params_for_budget(
    flops: float,
    tokens_per_param: float,
    convention: str = "algorithmic",
    vocab_size: int = GPT2_VOCAB,
    seq_len: int = R.SEQ_LEN,
    param_count: str = "total",
) -> float:
    """N such that the family's shape at N, trained on tpp·N tokens, costs `flops` (N and
    the returned count: total or non-embedding parameters)."""
    per_token = {"algorithmic": flops_per_token_algorithmic, "mfu": flops_per_token_mfu}[convention]
    count = param_counter(param_count)

    def cost(d: float) -> float:
        ns = SimpleNamespace(
            n_embd=d,
            n_layer=R.layers_for_width(d),
            vocab_size=vocab_size,
            n_positions=seq_len,
            n_inner=4 * d,
        )
        return per_token(ns, seq_len) * tokens_per_param * count(ns)

    if flops < cost(64):
        raise CgptError(
            f"a budget of {flops:.3g} FLOPs is below the smallest model in this "
            f"family ({cost(64):.3g} FLOPs at width 64); plan a shape with --layers/"
            f"--width instead"
        )
    d = _bisect(cost, flops, 64, 1e6)
    return _continuous_params(d, vocab_size, seq_len, count)


def plan_for_flops(
    flops: float,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    fit: R.Fit | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    **kw,
) -> Plan:
    """Compute-optimal plan for a training budget in algorithmic FLOPs (the paper's
    convention, the one its loss law uses): N and D = tpp·N grow together."""
    _check_positive(flops, "FLOP budget")
    tpp = _tpp(tokens_per_param, fit)
    pc = kw.get("param_count", "total")
    n = params_for_budget(flops, tpp, "algorithmic", vocab_size, seq_len, pc)
    return plan_for_params(n, tpp, law, fit=fit, seq_len=seq_len, vocab_size=vocab_size, **kw)


def plan_for_gpu_hours(
    gpu_hours: float,
    device: Device,
    mfu: float = 0.4,
    tokens_per_param: float | None = None,
    law: R.ScalingLaw | None = None,
    *,
    fit: R.Fit | None = None,
    seq_len: int = R.SEQ_LEN,
    vocab_size: int = GPT2_VOCAB,
    **kw,
) -> Plan:
    """Compute-optimal plan for GPU-hours on `device` at `mfu`: hardware FLOPs
    C = hours·3600·peak·mfu in the MFU convention (6N + 12·L·T·d per token); the GPU count
    does not matter for the total."""
    _check_positive(gpu_hours, "GPU-hours")
    _check_mfu(mfu)
    tpp = _tpp(tokens_per_param, fit)
    c = gpu_hours * 3600 * device.bf16_flops * mfu
    n = params_for_budget(c, tpp, "mfu", vocab_size, seq_len, kw.get("param_count", "total"))
    return plan_for_params(n, tpp, law, fit=fit, seq_len=seq_len, vocab_size=vocab_size, **kw)


def _tpp(tokens_per_param: float | None, fit: R.Fit | None) -> float:
    if tokens_per_param is None:
        return (fit or R.DEFAULT_FIT).tokens_per_param
    return _check_positive(tokens_per_param, "tokens per parameter")


def _check_mfu(mfu: float) -> None:
    if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        raise CgptError(f"MFU must be a fraction in (0, 1], got {mfu!r}")


# ---- the cluster ---------------------------------------------------------------------------
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
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
        raise CgptError(f"the GPU count must be a positive integer, got {gpus!r}")
    _check_mfu(mfu)
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
    _check_mfu(mfu)
    hours = plan.train_flops_mfu / (gpus * device.bf16_flops * mfu) / 3600
    return hours, hours * gpus


# ---- rules vs paper --------------------------------------------------------------------------
def rule_plan_for(name: str) -> Plan:
    """The rule-based plan at a published size's exact shape (for deviation reports)."""
    p = PUBLISHED[canonical_name(name)]
    layers, width, heads = shape_for_params(p.params)
    return plan_for_shape(layers, width, heads, name=f"{p.name} (rules)")


def rule_deviations() -> dict[tuple[str, str], tuple]:
    """{(size, quantity): (published, rules)} where the rules miss the paper beyond
    plan_rules.TOLERANCE (factors) or differ in kind (decay, heads, batch schedule)."""
    out = {}
    for name in PUBLISHED:
        pub, rule = plan_published(name), rule_plan_for(name)
        for key, tol in R.TOLERANCE.items():
            a, b = getattr(pub, key), getattr(rule, key)
            if key == "global_batch_seqs":  # 13B: the batch it grew to (the rule's fit point)
                a = pub.phases()[-1].global_batch_seqs
            if max(a / b, b / a) > tol:
                out[(name, key)] = (a, b)
        for key in ("decay", "adam_eps", "n_layer", "n_embd", "n_head", "out_init_std"):
            obj_p = pub.model if key.startswith("n_") or key == "out_init_std" else pub
            obj_r = rule.model if obj_p is pub.model else rule
            a, b = getattr(obj_p, key), getattr(obj_r, key)
            if (abs(a - b) > 1e-12 * abs(a)) if isinstance(a, float) else a != b:
                out[(name, key)] = (a, b)
        if pub.batch_schedule:
            out[(name, "batch_schedule")] = (len(pub.batch_schedule), 1)
    return out


# ---- configs/ ----------------------------------------------------------------------------------
CONFIG_GPUS, CONFIG_GPU = 8, "h100"  # configs/ target one 8×H100 node
CONFIG_DATA = "data/pile"


def published_run_config(name: str) -> RunConfig:
    """The run config shipped as configs/cerebras-gpt-<size>.yaml."""
    from cgpt.train.plan.devices import get_device

    plan = with_cluster(plan_published(name), CONFIG_GPUS, get_device(CONFIG_GPU))
    return plan.to_run_config(
        CONFIG_DATA, runtime={"eval_every": 1000, "save_every": 1000, "log_every": 10}
    )


CONFIG_HEADER = """\
# Cerebras-GPT-{name}: the published recipe (docs/REFERENCE.md, Training recipe) as a cgpt
# run config for one {gpus}x{gpu} node.
# Generated by `python -m cgpt.train.plan.planner --write-configs configs/`;
# do not edit by hand: tests/test_configs.py checks it against the planner.
# Other topologies: cgpt plan {name} --gpus N --gpu GPU --write run.yaml --data DIR
"""


def config_text(name: str) -> str:
    import yaml

    key = canonical_name(name)
    body = yaml.safe_dump(published_run_config(key).to_dict(), sort_keys=False)
    return CONFIG_HEADER.format(name=key, gpus=CONFIG_GPUS, gpu=CONFIG_GPU.upper()) + body


def write_configs(folder: str) -> list[str]:
    from pathlib import Path

    from cgpt.train.config import write_text_atomic

    paths = []
    for name in PUBLISHED:
        path = Path(folder) / f"{slug(name)}.yaml"
        write_text_atomic(path, config_text(name))
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-configs", metavar="DIR", required=True)
    for p in write_configs(ap.parse_args().write_configs):
        print(p)


# ---- continued pretraining -----------------------------------------------------------------
# Re-warm and re-decay (docs/REFERENCE.md, Related scaling laws: Ibrahim et al. 2024, arXiv
# 2403.08763; Gupta et al. 2023, arXiv 2308.04014): a linear warmup over 1% of the new steps
# back to the source's own peak LR, then decay to 10% of it over the rest.
CPT_WARMUP_FRACTION = 0.01


def plan_continued(
    model: GPTConfig,
    *,
    tokens: float | None = None,
    tokens_per_param: float | None = None,
    seq_len: int = R.SEQ_LEN,
    source_lr: float | None = None,
    lr_from: str = "",
    lr: float | None = None,
    global_batch_seqs: int | None = None,
    decay: str | None = None,
    name: str = "continued",
) -> Plan:
    """Continued pretraining of ``model`` (its weights come from a source) on ``tokens``
    (or ``tokens_per_param`` × params) new tokens: the family's batch rule for its size, a
    re-warmed schedule (warmup 1% of the steps, at least 1), peak = ``lr`` or the source's
    original peak ``source_lr`` (else the family's LR rule, with a note), decay to 10%."""
    if (tokens is None) == (tokens_per_param is None):
        raise CgptError("continued pretraining needs exactly one of --tokens, --tokens-per-param")
    params = num_params(model)
    if tokens is None:
        tokens = _check_positive(tokens_per_param, "tokens per parameter") * params
    _check_positive(tokens, "--tokens")
    if decay is not None and decay not in ("linear", "cosine", "wsd"):
        raise CgptError(f"decay must be linear, cosine or wsd, got {decay!r}")
    seq_len = min(seq_len, model.n_positions)
    batch = global_batch_seqs or R.batch_seqs_rule(params, seq_len)
    steps = R.steps_rule(tokens, batch * seq_len)
    if steps < 1:
        raise CgptError(
            f"{tokens:,.0f} tokens is less than one batch of {batch * seq_len:,} tokens; "
            "raise --tokens or lower --batch-seqs"
        )
    warmup = max(1, round(CPT_WARMUP_FRACTION * steps)) if steps > 1 else 0
    if lr:
        peak, why = lr, "--lr"
    elif source_lr:
        peak, why = source_lr, lr_from or "the source's peak LR"
    else:
        peak, why = R.lr_rule(params), "the family's LR rule (the source's own peak LR is unknown)"
    notes = (
        f"continued pretraining: re-warm over {warmup:,} steps (1% of {steps:,}) to peak "
        f"{peak:.3g} ({why}), then {decay or R.decay_rule(params)} decay to 10% "
        "(Ibrahim et al. 2024, arXiv 2403.08763; docs/REFERENCE.md, Related scaling laws)",
        "predicted loss: the from-scratch law at this compute; a continued run starts lower",
    )
    plan = make_plan(
        name,
        model,
        seq_len=seq_len,
        tokens=steps * batch * seq_len,
        steps=steps,
        global_batch_seqs=batch,
        lr=peak,
        min_lr=float(f"{peak * R.MIN_LR_FRACTION:.3g}"),
        warmup_steps=warmup,
        decay=decay or R.decay_rule(params),
        decay_steps=steps - warmup,
        adam_eps=R.adam_eps_rule(params),
        source="continued",
        notes=notes,
    )
    return replace(plan, extra={"recipe": "continued", "peak_lr_from": why})
