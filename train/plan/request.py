"""The planner's library entry point: ``plan(PlanRequest(...)) -> Plan``.

One request names exactly one thing to plan (a published size, a parameter count, a shape,
a FLOP budget or GPU-hours), optional rule overrides, the μP variant and optionally a
cluster. A refusal is a cgpt.train.checks.FieldError naming the request's fields. `cgpt plan`
parses its flags into a PlanRequest, prints the Plan and spells those fields as its flags;
library users call :func:`plan` directly::

    from cgpt.train.plan import PlanRequest, plan
    p = plan(PlanRequest(params=400e6, gpus=8, gpu="h100"))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, vocab_fits
from cgpt.train.checks import HF_PREFIX, FieldError, is_positive
from cgpt.train.plan import planner as P
from cgpt.train.plan.budget import CONVENTIONS, keep_within
from cgpt.train.plan.cluster import on_this_machine
from cgpt.train.plan.datacheck import (
    DataInfo,
    check_fits,
    read_data,
    vocab_for,
    wrong_tokenizer,
)
from cgpt.train.plan.devices import Device, get_device
from cgpt.train.plan.inference import (
    DEFAULT_LAW,
    flops_for_loss,
    law_from_fit,
    plan_inference,
    side_by_side,
)
from cgpt.train.plan.mup import apply_mup
from cgpt.train.plan.result import InferenceChoice
from cgpt.train.plan.rules import SEQ_LEN, load_fit

# Beyond these a request is a typo, not a plan (the largest published run, 13B on 257B
# tokens, is ~2.3e22 FLOPs): refuse instead of printing nonsense.
MAX_PARAMS = 1e14  # 100T parameters
MAX_FLOPS = 1e30
MAX_GPU_HOURS = 1e10


# the things a request can ask to plan: exactly one (init_from: with tokens, none of them)
_TARGETS = (
    ("{f.size}", "size"),
    ("{f.params}", "params"),
    ("{f.layers}/{f.width}", "layers"),
    ("{f.flops}", "flops"),
    ("{f.gpu_hours}", "gpu_hours"),
)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan (one of size, params, layers with width, flops, gpu_hours; or init_from
    with tokens or tokens_per_param), rule overrides, μP, the cluster, the data."""

    size: str | None = None  # a published size: 111M ... 13B
    params: float | None = None
    layers: int | None = None
    width: int | None = None
    heads: int | None = None
    flops: float | None = None  # a ceiling, in flops_convention
    flops_convention: str = "paper"  # paper (algorithmic) | 6n (6N + 12·L·T·d, the MFU one)
    gpu_hours: float | None = None  # needs gpu
    tokens_per_param: float | None = None
    fit: str | None = None  # a sweep's fit.json
    rules: bool = False  # a published size planned by the rules
    seq_len: int = SEQ_LEN
    vocab_size: int | None = None  # default: the data's vocab, else GPT-2's 50257
    batch_seqs: int | None = None
    lr: float | None = None
    decay: str | None = None  # linear | cosine | wsd (default: the family's rule)
    cooldown_fraction: float | None = None  # wsd only (default 0.2)
    recipe: str = "cerebras"  # batch/LR laws: one of rules.RECIPE_NAMES (cgpt.train.plan.recipes)
    param_count: str = "total"  # N in tokens = tokens_per_param × N: total | non-embedding
    mup: bool = False
    gpu: str | None = None
    gpus: int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    mfu: float = 0.4
    zero_stage: int | None = None
    micro_batch: int | None = None
    activation_checkpointing: bool | None = None
    init_from: str | None = None  # continued pretraining from these weights (init.source)
    tokens: float | None = None  # with init_from: new tokens to train on
    # with flops: tokens the model will serve; N, D minimise 6ND + 2NT at the loss of the
    # compute-optimal plan (cgpt.train.plan.inference, Sardana et al. 2023)
    inference_tokens: float | None = None
    # the data the run trains on, a folder or the data section's fields ({"path": DIR} or
    # {"sources": [{name, path, weight}, ...]}): it decides the vocab and is checked against
    # the plan (cgpt.train.plan.datacheck)
    data: str | dict | None = None
    # without a cluster: the memory the micro-batch must fit (default: this machine's RAM,
    # or one --gpu)
    memory_bytes: int | None = None

    @property
    def device(self) -> Device | None:
        return get_device(self.gpu) if self.gpu else None


def _check_range(value: float | None, limit: float, what: str) -> None:
    if value is not None and value > limit:
        raise CgptError(
            f"{what} {value:.3g} is beyond any trainable model (limit {limit:.0e}); "
            "check the number and its suffix (400M, 1.3B, 1e21)"
        )


def plan(req: PlanRequest) -> P.Plan:
    """The Plan a request asks for (CgptError names the conflicting or impossible input).
    With ``req.data`` the model takes the data's vocab and the plan must fit the data."""
    info = read_data(req.data) if req.data else None
    plan_ = _plan_continued(req, info) if req.init_from or req.tokens else _plan(req, info)
    if plan_.cluster is None:
        plan_ = on_this_machine(plan_, req.device, req.micro_batch, req.memory_bytes)
    if info is not None:
        batch = max(ph.global_batch_seqs for ph in plan_.phases())
        check_fits(info, plan_.seq_len, batch * plan_.seq_len)
        plan_ = replace(plan_, data=info.spec)
    return plan_


def _plan(req: PlanRequest, info: DataInfo | None) -> P.Plan:
    _check_request(req)
    inference_law = _inference_law(req)
    fit = load_fit(req.fit) if req.fit else None
    kw = _rule_options(req, info, fit)
    inference = optimal = None
    if req.size:
        plan_ = _sized(req, info, fit, kw)
    elif req.params:
        plan_ = P.plan_for_params(req.params, **kw)
    elif req.layers or req.width:
        if not (req.layers and req.width):
            raise FieldError("{f.layers} and {f.width} go together")
        plan_ = P.plan_for_shape(req.layers, req.width, req.heads, **kw)
    elif req.flops:
        if req.flops_convention not in CONVENTIONS:
            raise FieldError(
                "{f.flops_convention} must be one of {names}", names=", ".join(CONVENTIONS)
            )
        plan_ = P.plan_for_flops(req.flops, convention=CONVENTIONS[req.flops_convention], **kw)
        if inference_law is not None:  # the compute-optimal plan: the loss and the comparison
            optimal = plan_
            inference = _inference(req, inference_law, optimal)
            plan_ = P.plan_for_params(inference.params, **kw)
            # D for the rules' rounded N, so that this plan too reaches the target loss
            tokens = inference_law.tokens_for(plan_.params, inference.loss)
            plan_ = P.plan_for_params(
                inference.params, **{**kw, "tokens_per_param": tokens / plan_.params}
            )
    else:
        if req.device is None:
            raise FieldError("{f.gpu_hours} needs {f.gpu} (e.g. {f.gpu} h100) for the peak FLOP/s")
        assert req.gpu_hours is not None  # _check_request: the one target left is gpu_hours
        plan_ = P.plan_for_gpu_hours(req.gpu_hours, req.device, req.mfu, **kw)
    plan_ = _split(req, plan_)
    if inference is not None and optimal is not None:
        plan_ = _with_inference(plan_, inference, optimal)
    return plan_


def _check_request(req: PlanRequest) -> None:
    """Exactly one thing to plan, numbers in range."""
    chosen = [
        t for t, field in _TARGETS if getattr(req, field) or (field == "layers" and req.width)
    ]
    if len(chosen) != 1:
        got = " (got " + ", ".join(chosen) + ")" if chosen else ""
        raise FieldError("give exactly one of " + ", ".join(t for t, _ in _TARGETS) + got)
    _check_range(req.params, MAX_PARAMS, "a parameter count of")
    _check_range(req.flops, MAX_FLOPS, "a FLOP budget of")
    _check_range(req.gpu_hours, MAX_GPU_HOURS, "a budget of GPU-hours")
    _check_positive(req, "batch_seqs", integer=True)
    _check_positive(req, "lr")
    P.check_recipe(req.recipe)
    P.param_counter(req.param_count)


def _check_positive(req: PlanRequest, field: str, integer: bool = False) -> None:
    """A count or rate of the request, when given, is a positive number (or integer)."""
    value = getattr(req, field)
    if value is not None and not is_positive(value, integer=integer):
        kind = "integer" if integer else "number"
        raise FieldError(f"{{f.{field}}} must be a positive {kind}, got {{value!r}}", value=value)


def _rule_options(req: PlanRequest, info: DataInfo | None, fit) -> dict:
    """The family planners' options from the request (the vocab from the data)."""
    return dict(
        tokens_per_param=req.tokens_per_param,
        fit=fit,
        seq_len=req.seq_len,
        vocab_size=vocab_for(req.vocab_size, info, GPT2_VOCAB),
        global_batch_seqs=req.batch_seqs,
        lr=req.lr,
        decay=req.decay,
        cooldown_fraction=req.cooldown_fraction,
        recipe=req.recipe,
        param_count=req.param_count,
    )


def _sized(req: PlanRequest, info: DataInfo | None, fit, kw: dict) -> P.Plan:
    """A published size: its recipe, or (--rules) its shape planned by the rules."""
    assert req.size is not None  # _plan calls it only for a size
    if req.rules:
        base = P.plan_published(req.size)  # validates the name
        return P.plan_for_shape(
            base.model.n_layer, base.model.n_embd, name=base.name + "-rules", **kw
        )
    _published_vocab(req, info)
    plan_ = P.plan_published(req.size, law=fit.law if fit else None)
    changed = (
        req.batch_seqs
        or req.lr
        or req.tokens_per_param
        or req.decay
        or req.recipe != "cerebras"
        or req.param_count != "total"
    )
    if changed:
        raise FieldError(
            "{f.batch_seqs}/{f.lr}/{f.tokens_per_param}/{f.decay}/{f.recipe}/{f.param_count} "
            "change a published recipe; add {f.rules} to plan this size by the rules "
            "instead"
        )
    return plan_


def _split(req: PlanRequest, plan_: P.Plan) -> P.Plan:
    """A rule batch rounded to the GPU count (a budget kept), μP, the cluster fit."""
    gpus = gpu_count(req)
    if gpus and plan_.source == "rules" and not req.batch_seqs and plan_.global_batch_seqs % gpus:
        budget = plan_.budget
        plan_ = rebatch(plan_, gpus, req.lr)
        plan_ = keep_within(plan_, budget) if budget else plan_
    if req.mup:
        plan_ = apply_mup(plan_)
    return plan_ if gpus is None else _on_cluster(plan_, req, gpus)


def _with_inference(plan_: P.Plan, inference, optimal: P.Plan) -> P.Plan:
    """The inference-aware plan with its comparison to the compute-optimal plan, every
    number (the plan's own predicted loss too) by the one law that chose it."""
    sbs = side_by_side(
        inference.law,
        inference.inference_tokens,
        (plan_.params, plan_.tokens),
        (optimal.params, optimal.tokens),
    )
    loss = round(sbs["inference_aware"]["predicted_loss"], 4)
    return replace(
        plan_,
        section=plan_.section.model_copy(update={"predicted_loss": loss}),
        inference=InferenceChoice(inference, sbs),
        notes=plan_.notes + (_inference_note(inference, plan_),),
    )


def _published_vocab(req: PlanRequest, info: DataInfo | None) -> None:
    """A published recipe trains GPT-2's vocab: refuse data of another tokenizer."""
    vocab = req.vocab_size if req.vocab_size is not None else GPT2_VOCAB
    if not vocab_fits(vocab, GPT2_VOCAB):
        raise FieldError(
            "the published {size} recipe has GPT-2's vocab {gpt2}; add {f.rules} to "
            "plan this shape with vocab {vocab}",
            size=req.size,
            gpt2=GPT2_VOCAB,
            vocab=vocab,
        )
    if info is not None and not vocab_fits(GPT2_VOCAB, info.vocab_size):
        raise FieldError(
            "the published {size} recipe has GPT-2's vocab {gpt2} but "
            "{folder!r} was tokenized with vocab {vocab}; add {f.rules} "
            "to plan this shape with the data's vocab, or prepare the data with GPT-2's "
            "tokenizer",
            size=req.size,
            gpt2=GPT2_VOCAB,
            folder=str(info.first.dir),
            vocab=info.vocab_size,
        )


def _inference_law(req: PlanRequest):
    """The L(N, D) law of an inference-aware plan (--flops with --inference-tokens; else
    None), after checking the request."""
    if req.inference_tokens is None:
        return None
    if not req.flops:
        raise FieldError("{f.inference_tokens} goes with {f.flops} (the budget that sets the loss)")
    if req.tokens_per_param is not None:
        raise FieldError(
            "{f.inference_tokens} chooses tokens/param itself; drop {f.tokens_per_param}"
        )
    if req.param_count != "total":
        raise FieldError("{f.inference_tokens} counts N as total parameters; drop {f.param_count}")
    _check_range(req.flops, MAX_FLOPS, "a FLOP budget of")
    return law_from_fit(req.fit) if req.fit else DEFAULT_LAW


def _inference(req: PlanRequest, law, optimal: P.Plan):
    """The inference-aware N and D: the least 6·N·D + 2·N·T that reaches, by ``law``, the
    loss of the compute-optimal plan ``optimal`` (the one it is compared with)."""
    target = law.loss(optimal.params, optimal.tokens)
    assert req.inference_tokens is not None  # _inference_law gave no law without them
    return plan_inference(flops_for_loss(law, target), req.inference_tokens, law)


def _inference_note(ip, plan_: P.Plan) -> str:
    return (
        f"inference-aware (Sardana et al. 2023, arXiv 2401.00448): N = {ip.params:.4g}, "
        f"D = {ip.tokens:.4g} minimise 6ND + 2NT at T = {ip.inference_tokens:.3g} inference "
        f"tokens for the loss L* = {ip.loss:.4f} of the compute-optimal plan "
        f"({ip.law.source}); the rules' shape has {plan_.params:,} params"
    )


def _plan_continued(req: PlanRequest, info: DataInfo | None) -> P.Plan:
    """`cgpt plan --init-from SRC --tokens N`: the source's model, the family's batch rule,
    a re-warmed schedule (cgpt.train.plan.planner.plan_continued)."""
    # deferred: resolving a model source imports torch; other plans do not need it
    from cgpt.train.source.model_source import resolve
    from cgpt.train.source.tokenizer import check_tokenizer

    if not req.init_from:
        raise FieldError("{f.tokens} goes with {f.init_from} (others plan by {f.tokens_per_param})")
    others = [
        t
        for t, field in (*_TARGETS, ("{f.fit}", "fit"), ("{f.mup}", "mup"), ("{f.rules}", "rules"))
        if getattr(req, field) or (field == "layers" and req.width)
    ]
    if others:
        raise FieldError("{f.init_from} takes the model from its source; drop " + ", ".join(others))
    if req.recipe != "cerebras" or req.param_count != "total":
        raise FieldError("{f.recipe}/{f.param_count} do not apply to {f.init_from} plans")
    src = resolve(req.init_from, weights=False)
    if info is not None and not vocab_fits(src.shape.vocab_size, info.vocab_size):
        raise CgptError(wrong_tokenizer(req.init_from, src, info.first))
    if info is not None:  # the same vocab size, another tokenizer: the same advice
        check_tokenizer(src, info.first)
    if req.vocab_size is not None and req.vocab_size != src.shape.vocab_size:
        raise FieldError(
            "{f.vocab_size} {asked} contradicts {f.init_from} {source}, whose "
            "vocab is {vocab}; drop {f.vocab_size}",
            asked=req.vocab_size,
            source=req.init_from,
            vocab=src.shape.vocab_size,
        )
    name = "continue-" + Path(src.spec.removeprefix(HF_PREFIX).rstrip("/")).name.lower()
    plan_ = P.plan_continued(
        src.shape,
        tokens=req.tokens,
        tokens_per_param=req.tokens_per_param,
        seq_len=req.seq_len,
        source_lr=src.peak_lr,
        lr_from=src.lr_from,
        lr=req.lr,
        global_batch_seqs=req.batch_seqs,
        decay=req.decay,
        name=name,
    )
    plan_ = replace(plan_, init_from=req.init_from)
    gpus = gpu_count(req)
    return plan_ if gpus is None else _on_cluster(plan_, req, gpus)


def _on_cluster(plan_: P.Plan, req: PlanRequest, gpus: int) -> P.Plan:
    """The plan split over ``gpus`` GPUs of ``req.device`` (memory, micro-batch, hours)."""
    if req.device is None:
        raise FieldError("{f.gpus}/{f.nodes} need {f.gpu} (e.g. {f.gpu} h100) for memory and peak")
    return P.with_cluster(
        plan_,
        gpus,
        req.device,
        req.zero_stage,
        req.mfu,
        req.micro_batch,
        req.activation_checkpointing,
        per_node=(req.gpus_per_node or 1) if (req.nodes or req.gpus_per_node) else None,
    )


def rebatch(plan_: P.Plan, gpus: int, lr: float | None = None) -> P.Plan:
    """A rule-based batch is a choice, not a fact: round it to a multiple of the GPU count
    so the split works (a published batch is kept and an impossible split is refused)."""
    m, rule_batch = plan_.model, plan_.global_batch_seqs
    batch = max(gpus, round(rule_batch / gpus) * gpus)
    new = P.plan_for_shape(
        m.n_layer,
        m.n_embd,
        m.n_head,
        tokens_per_param=plan_.target_tokens_per_param,
        law=plan_.law,
        seq_len=plan_.seq_len,
        vocab_size=m.vocab_size,
        name=plan_.name,
        global_batch_seqs=batch,
        lr=lr,
        decay=plan_.decay,
        cooldown_fraction=plan_.cooldown_fraction,
        recipe=plan_.recipe or "cerebras",
        param_count=plan_.param_count or "total",
    )
    note = (
        f"global batch rounded from the rule's {rule_batch} to {batch} sequences, a "
        f"multiple of {gpus} GPUs (set --batch-seqs to choose)"
    )
    return new.replace(notes=plan_.notes + (note,))


def gpu_count(req: PlanRequest) -> int | None:
    """Total GPUs from gpus or nodes × gpus_per_node (they must agree)."""
    for name in ("gpus", "nodes", "gpus_per_node"):
        _check_positive(req, name, integer=True)
    if req.nodes or req.gpus_per_node:
        total = (req.nodes or 1) * (req.gpus_per_node or 1)
        if req.gpus and req.gpus != total:
            raise FieldError(
                "{f.gpus} {gpus} disagrees with {f.nodes} × {f.gpus_per_node} = {total}",
                gpus=req.gpus,
                total=total,
            )
        return total
    return req.gpus
