"""The planner's answer: :class:`Plan` (a run config's plan section, the model it trains, the
loss law behind its prediction, its provenance) and :class:`Cluster` (where it runs).

Build a Plan with :func:`make_plan`; the planners that choose its numbers live in
cgpt.train.plan.family (rules), .budget (FLOPs, GPU-hours), .published and .continued.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cgpt.model.config import GPTConfig
from cgpt.model.sizes import (
    PUBLISHED,
    flops_per_token_algorithmic,
    flops_per_token_mfu,
    num_params,
)
from cgpt.train.cli_args import data_spec
from cgpt.train.config import BatchPhase, DataSection, PlanSection, RunConfig, RuntimeSection
from cgpt.train.plan import rules as R
from cgpt.train.plan.devices import Device
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
        self, data_path: str | dict, tokenizer: str | None = None, runtime: dict | None = None
    ) -> RunConfig:
        """The run config of this plan; ``data_path`` is ``--data`` text or the data
        section's fields (cgpt.train.plan.datacheck.absolute_spec)."""
        rt: dict = {"out_dir": f"runs/{slug(self.name)}"}
        if self.cluster:
            rt.update(
                micro_batch=self.cluster.micro_batch,
                zero_stage=self.cluster.zero_stage,
                activation_checkpointing=self.cluster.activation_checkpointing,
            )
        elif self.extra.get("local"):  # one rank here (cgpt.train.plan.cluster)
            rt["micro_batch"] = self.extra["local"]["micro_batch"]
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


def _data_fields(data: str | dict) -> dict:
    return dict(data) if isinstance(data, dict) else data_spec(data)


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
