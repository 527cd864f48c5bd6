"""Planning a sweep's points: one run config per point, in the order they run.

Each point is planned by the planner's rules (``plan_for_shape``) with the sweep's batch,
LR, warmup and decay; ``lr: tuned`` adds one point per LR multiplier, ``lr: mup`` applies
μP (with ``lr_grid``, one point per multiplier of its base LR), and ``branches`` turns each
size (and LR trial) into one stable warmup-stable-decay run plus its cooldown branches
(:func:`plan_branch_group`; cgpt.train.sweeps.branches makes their folders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError, ConfigError
from cgpt.model.sizes import flops_per_token_algorithmic, num_params
from cgpt.train.config import RunConfig
from cgpt.train.plan.mup import apply_mup
from cgpt.train.plan.planner import plan_for_shape, shape_for_params
from cgpt.train.plan.schedule import cooldown_steps
from cgpt.train.sweeps.branch import branch_plan
from cgpt.train.sweeps.config import SizeSpec, SweepConfig
from cgpt.train.sweeps.data import tokenizer_dir


@dataclass
class Point:
    name: str
    cfg: RunConfig
    budget: float | None = None
    group: str | None = None  # LR trials: the size (and budget) this trial belongs to
    lr_mult: float | None = None
    # branches: the stable run this point branches from (None for the stable run itself),
    # its multiple of the planned tokens, and the step its cooldown starts at (its checkpoint)
    branch_of: str | None = None
    tokens_multiple: float | None = None
    branch_step: int | None = None
    # seeds: the point this run replicates (its name without the -sSEED suffix) and its seed
    replicate_of: str | None = None
    seed: int | None = None
    target: bool = False  # a held-out target (trained once, left out of every fit)

    def flops(self, tokens: int | None = None) -> float:
        """Training FLOPs of ``tokens`` (default: the plan's) as if this point trained alone."""
        tokens = self.cfg.plan.tokens if tokens is None else tokens
        return float(flops_per_token_algorithmic(self.cfg.model, self.cfg.plan.seq_len) * tokens)

    def cost_flops(self, tokens: int | None = None) -> float:
        """What the sweep spends on this point: a branch trains only its cooldown (the steps
        before ``branch_step`` are the stable run's)."""
        tokens = self.cfg.plan.tokens if tokens is None else tokens
        shared = (self.branch_step or 0) * self.cfg.plan.global_batch_tokens
        return self.flops(tokens - shared)


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
        for n in sweep.params:
            layers, width, heads = shape_for_params(n, vocab, sweep.model.seq_len)
            sizes.append(SizeSpec(n_layer=layers, n_embd=width, n_head=heads))
    return sizes


def plan_point(
    sweep: SweepConfig,
    size: SizeSpec,
    vocab: int,
    tpp: float,
    name: str,
    out: Path,
    tok: str | None,
    lr_mult: float = 1.0,
    lr: float | None = None,
) -> RunConfig:
    """The run config of one point: ``size`` trained on ``tpp`` × params tokens (at peak LR
    ``lr`` when given, else the sweep's rule × ``lr_mult``)."""
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
            lr=lr or (sweep.plan.lr if sweep.lr == "mup" else _lr(sweep, size)) * lr_mult,
            decay=sweep.plan.decay,
            cooldown_fraction=sweep.cooldown_fraction,
            recipe=sweep.plan.recipe,
        )
        if sweep.plan.warmup_tokens_per_param is not None:
            warm = math.ceil(
                sweep.plan.warmup_tokens_per_param * plan.params / plan.global_batch_tokens
            )
            warm = min(max(warm, 1), plan.steps - 1)
            plan = plan.replace(warmup_steps=warm, decay_steps=plan.steps - warm)
        if sweep.lr == "mup":
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
    """One run config per point, in the order they run (small to large; a stable run
    before its branches), held-out targets last at the sweep's rule LR (their LR law
    replans them: cgpt.train.sweeps.target_lr)."""
    out, tok = Path(sweep.out_dir), tokenizer_dir(sweep)
    vocab = sweep.model.vocab_size or vocab
    points = []
    tuned = sweep.tunes_lr
    for size in _sizes(sweep, vocab):
        shape = f"L{size.n_layer}-d{size.n_embd}-h{size.n_head}"
        if sweep.branches is not None:
            for m in sweep.grid:
                points += plan_branch_group(
                    sweep, size, vocab, shape, out, tok, lr_mult=m if tuned else None
                )
            continue
        targets: list[tuple[str, float, float | None]] = []  # (name, tokens/param, budget)
        if sweep.isoflop is None:
            # SweepConfig's validator requires tokens_per_param for a fixed-ratio sweep
            assert sweep.tokens_per_param is not None
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
                cfg = plan_point(sweep, size, vocab, tpp, name, out, tok, lr_mult=m)
                points.append(
                    Point(
                        name,
                        cfg,
                        budget=budget,
                        group=group if tuned else None,
                        lr_mult=m if tuned else None,
                    )
                )
    if sweep.seeds:
        points = [_replicate(p, seed) for p in points for seed in sweep.seeds]
    points += plan_targets(sweep, vocab)
    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sweep lists the same size twice: {', '.join(dup)}")
    return sorted(
        points,
        key=lambda p: (
            (
                p.budget or 0,
                p.cfg.plan.params,
                p.lr_mult or 0,
                p.branch_of is not None,  # a stable run before its branches
                p.tokens_multiple or 0,
                p.replicate_of or "",
            )
            if not p.target
            else (math.inf,)
        ),  # the targets after the whole ladder, in the file's order
    )


# ---- one run, many budgets: a stable run and its branches (sweep_branches.py) -------------
def _cooldown_start(cfg: RunConfig) -> int:
    """The first step of a one-phase wsd plan's cooldown."""
    return cfg.plan.steps - cooldown_steps(cfg.plan.phases()[0])


def _keep_last(cfg: RunConfig, first: int) -> int:
    """Enough checkpoints that none saved at or after step ``first`` by one process is pruned
    while that process runs: every save_every, save_steps and final save from ``first`` on,
    plus one that a signal may add."""
    rt, steps = cfg.runtime, cfg.plan.steps
    saves = {s for s in rt.save_steps if s >= first} | {steps}
    if rt.save_every:
        start = rt.save_every * math.ceil(first / rt.save_every)
        saves |= set(range(start, steps + 1, rt.save_every))
    return max(rt.keep_last, len(saves) + 1)


def plan_branch_group(
    sweep: SweepConfig,
    size: SizeSpec,
    vocab: int,
    shape: str,
    out: Path,
    tok: str | None,
    lr_mult: float | None = None,
) -> list[Point]:
    """The stable run of one size (and LR trial) and its branches, stable run first."""
    assert sweep.branches is not None and sweep.tokens_per_param is not None
    at = sorted(sweep.branches.at)

    def names(m: float) -> tuple[str, str | None]:  # (point name, LR-trial group)
        group = f"{shape}-x{m:g}"
        return (f"{group}-lrx{lr_mult:g}", group) if lr_mult is not None else (group, None)

    dedicated = {
        m: plan_point(
            sweep, size, vocab, sweep.tokens_per_param * m, names(m)[0], out, tok, lr_mult or 1.0
        )
        for m in at
    }
    stable, top = dedicated[at[-1]], names(at[-1])[0]
    starts = {m: _cooldown_start(dedicated[m]) for m in at[:-1]}
    own = _cooldown_start(stable)
    for m, k in starts.items():
        if k >= own:
            raise CgptError(
                f"point {names(m)[0]} would start its cooldown at step {k}, not before the "
                f"stable run {top}'s own cooldown (step {own}); space branches.at further apart"
            )
    same = [m for m in starts if list(starts.values()).count(starts[m]) > 1]
    if same:
        raise CgptError(
            f"points {', '.join(names(m)[0] for m in same)} would all start their cooldowns at "
            f"step {starts[same[0]]}: too few steps to tell them apart; space branches.at "
            "further apart or raise tokens_per_param"
        )
    if starts:
        rt = stable.runtime
        rt = rt.model_copy(update={"save_steps": sorted(set(rt.save_steps) | set(starts.values()))})
        stable = stable.model_copy(update={"runtime": rt})
        rt = rt.model_copy(update={"keep_last": _keep_last(stable, min(starts.values()))})
        stable = stable.model_copy(update={"runtime": rt})
    points = [Point(top, stable, group=names(at[-1])[1], lr_mult=lr_mult, tokens_multiple=at[-1])]
    for m, k in starts.items():
        name, group = names(m)
        try:
            plan = branch_plan(
                stable.plan, k, stable.plan.cooldown_fraction or 0.0, dedicated[m].plan.steps
            )
        except CgptError as e:
            raise CgptError(
                f"point {name}: {e}; drop x{m:g} from branches.at or raise tokens_per_param"
            ) from None
        if plan.steps < sweep.plan.min_steps:
            raise CgptError(
                f"point {name} would train for only {plan.steps} steps (plan.min_steps is "
                f"{sweep.plan.min_steps}); drop x{m:g} from branches.at or raise tokens_per_param"
            )
        cfg = dedicated[m].model_copy(update={"plan": plan})
        points.append(
            Point(
                name,
                cfg,
                group=group,
                lr_mult=lr_mult,
                branch_of=top,
                tokens_multiple=m,
                branch_step=k,
            )
        )
    return points


def plan_targets(
    sweep: SweepConfig, vocab: int, target_lrs: dict[str, float] | None = None
) -> list[Point]:
    """The held-out targets alone, as :func:`plan_points` plans them, at ``target_lrs`` by
    name, else the sweep's rule: ``target-SHAPE`` at the first target seed (if any), then each
    target again at every other seed (``target-SHAPE-sSEED``, a replicate of the first)."""
    out, tok, lrs = Path(sweep.out_dir), tokenizer_dir(sweep), target_lrs or {}
    vocab = sweep.model.vocab_size or vocab
    seeds = sweep.target_seed_list or []
    points, replicates = [], []
    for size in sweep.targets or []:
        name = f"target-L{size.n_layer}-d{size.n_embd}-h{size.n_head}"
        tpp = sweep.tokens_per_param or 0
        cfg = plan_point(sweep, size, vocab, tpp, name, out, tok, lr=lrs.get(name))
        p = Point(name, cfg, target=True)
        if seeds:
            runtime = cfg.runtime.model_copy(update={"seed": seeds[0]})
            of = name if len(seeds) > 1 else None
            cfg = cfg.model_copy(update={"runtime": runtime})
            p = replace(p, cfg=cfg, seed=seeds[0], replicate_of=of)
        points.append(p)
        replicates += [_replicate(p, seed) for seed in seeds[1:]]
    return points + replicates


def _replicate(p: Point, seed: int) -> Point:
    """Point ``p`` trained with runtime.seed = ``seed``, named ``NAME-sSEED``."""
    name = f"{p.name}-s{seed}"
    out = str(Path(p.cfg.runtime.out_dir).with_name(name))
    runtime = p.cfg.runtime.model_copy(update={"seed": seed, "out_dir": out})
    cfg = p.cfg.model_copy(update={"runtime": runtime})
    return replace(p, name=name, cfg=cfg, replicate_of=p.name, seed=seed)


def _probe(size: SizeSpec, vocab: int, seq_len: int):
    return GPTConfig(
        n_layer=size.n_layer,
        n_embd=size.n_embd,
        n_head=size.n_head,
        n_positions=seq_len,
        vocab_size=vocab,
    )
