"""The planner's answer: :class:`Plan` (a run config's plan section, the model it trains, the
loss law behind its prediction, its provenance) and :class:`Cluster` (where it runs).

Build a Plan with :func:`make_plan`; the planners that choose its numbers live in
cgpt.train.plan.family (rules), .budget (FLOPs, GPU-hours), .published and .continued.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from cgpt.model.config import GPTConfig
from cgpt.model.sizes import (
    PUBLISHED,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_params,
)
from cgpt.train.config import BatchPhase, DataSection, PlanSection, RunConfig, RuntimeSection
from cgpt.train.plan import rules as R
from cgpt.train.plan.devices import Device
from cgpt.train.plan.inference import InferencePlan
from cgpt.train.plan.memory import MemoryEstimate
from cgpt.train.plan.schedule import cooldown_steps


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


@dataclass(frozen=True)
class LocalFit:
    """The micro-batch a plan without a cluster writes, for one rank here
    (cgpt.train.plan.cluster.on_this_machine): the largest that divides every batch phase and
    fits ``where``, or the one asked for."""

    micro_batch: int | None  # None: not even the asked (or 1) fits; the plan says so in a note
    grad_accum: tuple[int, ...]  # per batch phase
    memory_bytes: int  # one rank's need at that micro-batch
    where: str  # the device, or "this machine's RAM"
    available_bytes: int
    chosen: bool  # by the planner (False: --micro-batch / PlanRequest.micro_batch)

    def to_json(self) -> dict | None:
        if self.micro_batch is None:
            return None
        return {
            "micro_batch": self.micro_batch,
            "grad_accum": list(self.grad_accum),
            "memory_bytes": self.memory_bytes,
            "where": self.where,
            "available_bytes": self.available_bytes,
            "chosen": self.chosen,
        }


@dataclass(frozen=True)
class Neighbour:
    """A rule plan just below or above a budget (tokens/param exactly the rule's)."""

    name: str
    params: int
    flops: float  # in the budget's convention


@dataclass(frozen=True)
class Budget:
    """The budget a plan was cut to (cgpt.train.plan.budget), a ceiling: its FLOPs in its
    convention, the share this plan uses, the rule plans on both sides of it; from GPU-hours
    also the hours, GPU and MFU they were converted at."""

    flops: float
    convention: str  # budget.CONVENTION_NAMES' wording of "algorithmic" or "mfu"
    used_flops: float
    share: float  # used_flops / flops, <= 1
    neighbours: tuple[Neighbour, ...] = ()
    gpu_hours: float | None = None
    gpu: str | None = None
    mfu: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["neighbours"] = [asdict(n) for n in self.neighbours]
        return {k: v for k, v in d.items() if v is not None or k not in _GPU_HOURS}


_GPU_HOURS = ("gpu_hours", "gpu", "mfu")


@dataclass(frozen=True)
class InferenceChoice:
    """Why an inference-aware plan has its N and D (cgpt.train.plan.inference): the choice
    and, by the same law, its comparison with the compute-optimal plan."""

    choice: InferencePlan
    side_by_side: dict  # inference.side_by_side(): both runs' N, D, FLOPs, loss; break-even

    def to_json(self) -> dict:
        return {**self.choice.to_json(), "side_by_side": self.side_by_side}


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
    # how the planner got here (None: does not apply); to_json writes them in this order
    recipe: str | None = None  # batch/LR laws (rules.RECIPE_NAMES) or "continued"
    param_count: str | None = None  # what N counts in tokens = tokens/param × N
    counted_params: int | None = None  # that N
    peak_lr_from: str | None = None  # continued pretraining: where the peak LR came from
    init_from: str | None = None  # continued pretraining: the weights' source (init.source)
    budget: Budget | None = None
    mup_recipe: dict | None = None  # cgpt.train.plan.mup.mup_recipe: multipliers, init stds
    inference: InferenceChoice | None = None
    local: LocalFit | None = None  # no cluster: the micro-batch for one rank here
    data: dict | None = None  # the data section's fields (paths absolute) it was checked on

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
        self, data_path: str | dict, tokenizer: str | None = None, runtime: dict | None = None
    ) -> RunConfig:
        """The run config of this plan; ``data_path`` is a data folder or the data section's
        fields (``{"sources": [...]}`` for a mixture; cgpt.train.plan.datacheck)."""
        rt: dict = {"out_dir": f"runs/{slug(self.name)}"}
        if self.cluster:
            rt.update(
                micro_batch=self.cluster.micro_batch,
                zero_stage=self.cluster.zero_stage,
                activation_checkpointing=self.cluster.activation_checkpointing,
            )
        elif self.local and self.local.micro_batch:  # one rank here (plan.cluster)
            rt["micro_batch"] = self.local.micro_batch
        rt.update(runtime or {})
        return RunConfig(
            model=self.model,
            data=DataSection(**_data_fields(data_path), tokenizer=tokenizer),
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
            **self._provenance_json(),
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

    def _provenance_json(self) -> dict:
        """The fields that say how the planner got here, those that apply, in field order."""
        d: dict = {}
        for name in _PROVENANCE:
            v = getattr(self, name)
            if v is not None:
                d[name] = v.to_json() if hasattr(v, "to_json") else v
        return d


_PROVENANCE = (
    "recipe",
    "param_count",
    "counted_params",
    "peak_lr_from",
    "init_from",
    "budget",
    "mup_recipe",
    "inference",
    "local",
    "data",
)


def _data_fields(data: str | dict) -> dict:
    return dict(data) if isinstance(data, dict) else {"path": data}


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
