"""Training-step benchmark: tokens/s, step time, peak memory and MFU on synthetic tokens.

``bench(...)`` times full optimizer steps of our GPT *as ``cgpt train`` runs them*: the
trainer's DeepSpeed engine, DeepSpeed config (ZeRO stage, precision, gradient clipping)
and fused AdamW. Side by side it times ``transformers.GPT2LMHeadModel`` (SDPA attention)
of the same shape with the same AdamW and batch in the plain PyTorch loop HF's Trainer
uses: in bf16 that is ``torch.autocast`` over fp32 weights, in fp32 plain fp32. Steps are
interleaved (ours, HF, ours, HF, ...) after a warm-up in one process, so machine noise
hits both alike; the ratio is median step time HF / ours. MFU follows 6N + 12·L·T·d per
token (docs/REFERENCE.md, FLOP conventions) against the device table's bf16 peak
(docs/REFERENCE.md, Throughput references); it is None on CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cgpt.model import GPT, GPTConfig, flops_per_token_mfu, num_params
from cgpt.model.errors import CgptError
from cgpt.model.hf import gpt_config_to_hf
from cgpt.train.config import load_run_config
from cgpt.train.distributed import init_distributed
from cgpt.train.loop.engine import engine_config, initialize_engine, make_adamw
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.devices import detect_peak_flops
from cgpt.train.source.fill import fill_model_section


@dataclass
class Shape:
    name: str
    config: GPTConfig
    seq_len: int
    micro_batch: int
    precision: str = "bf16"  # the run config default (cgpt.train.config)
    zero_stage: int = 1


def resolve_shape(
    target: str, seq_len: int | None, micro_batch: int | None, n_layer: int | None = None
) -> Shape:
    """A published size ('111M', 'cerebras-gpt-1.3b') or a run config YAML."""
    overrides = {"n_layer": n_layer} if n_layer else {}
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        cfg = load_run_config(target, fill=fill_model_section)
        gcfg = cfg.model
        if overrides:
            gcfg = GPTConfig.from_dict({**gcfg.to_dict(), **overrides})
        return Shape(
            Path(target).stem,
            gcfg,
            seq_len or cfg.plan.seq_len,
            micro_batch or cfg.runtime.micro_batch,
            cfg.runtime.precision,
            cfg.runtime.zero_stage,
        )
    gcfg = GPTConfig.from_name(target, **overrides)
    return Shape(target, gcfg, seq_len or gcfg.n_positions, micro_batch or 1)


def _hf_model(cfg: GPTConfig):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise CgptError(
            "the side-by-side benchmark needs transformers: pip install 'cgpt[hf]'"
        ) from None
    d = gpt_config_to_hf(cfg)
    d.pop("dtype", None), d.pop("torch_dtype", None)
    hcfg = GPT2Config(**d)
    hcfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hcfg)
    model.config.use_cache = False
    return model


class _Runner:
    """One model, its optimizer and a step function; records step times."""

    name = "?"

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []
        self.peak_mem = 0
        self.state_bytes = 0

    def _step(self, x, y) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x, y, timed: bool) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = self._step(x, y)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if timed:
            self.times.append(dt)
        return float(loss.detach())


def _adamw(model: torch.nn.Module, device: torch.device):
    """The same AdamW for every model benchmarked (the trainer's make_adamw)."""
    return make_adamw(model, 1e-4, (0.9, 0.95), 1e-8, 0.1, device.type)


class _HFWithLoss(torch.nn.Module):
    """GPT2LMHeadModel with our (model, targets) -> loss call; the labels are already
    shifted; fp32 loss as HF's own loss function computes it."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x, y):
        logits = self.hf(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


class _EngineRunner(_Runner):
    """cgpt: the trainer's DeepSpeed engine (bf16 = bf16 weights, fp32 master weights and
    gradient accumulation under ZeRO-1; the fused loss of cgpt.model.fused_ce). With
    ``hf`` the transformers model runs in the same engine instead."""

    name = "cgpt"

    def __init__(
        self,
        cfg: GPTConfig,
        device: torch.device,
        precision: str,
        zero_stage: int,
        micro_batch: int,
        compile_: bool,
        hf: bool = False,
        fused_loss: bool = True,
    ):
        super().__init__(device)
        dist = init_distributed(device.type)
        if dist.world_size != 1:
            raise CgptError("cgpt bench runs in one process; start it without a launcher")
        model = _HFWithLoss(_hf_model(cfg)) if hf else GPT(cfg)
        if hf:
            self.name = "transformers"
        else:
            model.fused_loss = fused_loss
        opt = _adamw(model, device)
        ds = engine_config(split_batch(micro_batch, 1, micro_batch), 1.0, zero_stage, precision)
        self.engine = initialize_engine(model, opt, ds, dist.world_size)
        if compile_:
            self.engine.compile()

    def _step(self, x, y):
        loss = self.engine(x, y)
        self.engine.backward(loss)
        self.engine.step()
        return loss


class _HFRunner(_Runner):
    """transformers.GPT2LMHeadModel in the plain loop (HF Trainer's: autocast for bf16)."""

    name = "transformers"

    def __init__(self, cfg: GPTConfig, device: torch.device, precision: str, compile_: bool):
        super().__init__(device)
        self.model = _HFWithLoss(_hf_model(cfg)).to(device).train()
        self.bf16 = precision == "bf16"
        self.opt = _adamw(self.model, device)
        self.fwd = torch.compile(self.model) if compile_ else self.model

    def _step(self, x, y):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def _allocated(device: torch.device) -> int:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0


def _peak_memory(device: torch.device, state_bytes: int, before: int) -> int:
    """On CUDA this model's own peak: its resident state (weights, master weights, optimizer
    state) plus what its step allocated above what was resident, so the other model in the
    process does not count. On CPU the process's RSS, which covers both models."""
    if device.type == "cuda":
        return state_bytes + int(torch.cuda.max_memory_allocated(device)) - before
    import psutil

    return int(psutil.Process().memory_info().rss)


def _report(r: _Runner, shape: Shape, peak: float | None) -> dict:
    med = statistics.median(r.times)
    tokens = shape.micro_batch * shape.seq_len
    tps = tokens / med
    fpt = flops_per_token_mfu(shape.config, shape.seq_len)
    return {
        "model": r.name,
        "step_ms": med * 1e3,
        "step_ms_min": min(r.times) * 1e3,
        "tokens_per_s": tps,
        "tflops": fpt * tps / 1e12,
        "mfu": fpt * tps / peak if peak else None,
        "peak_memory_bytes": r.peak_mem,
        "steps": len(r.times),
    }


def _device(device: str) -> torch.device:
    """--device auto|cuda|cpu as a torch device; cuda must be visible."""
    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CgptError("--device cuda but no CUDA GPU is visible")
    return dev


def _check_shape(shape: Shape, precision: str, zero_stage: int | None) -> tuple[str, int]:
    """The precision and ZeRO stage to time (``auto``/None: the shape's), refused when
    cgpt bench cannot time them or the sequence does not fit the model."""
    prec = shape.precision if precision == "auto" else precision
    if prec not in ("bf16", "fp32"):
        raise CgptError(
            f"cgpt bench times bf16 or fp32 steps, not {prec}: pass --precision bf16 or fp32"
        )
    stage = shape.zero_stage if zero_stage is None else zero_stage
    if stage not in (0, 1, 2, 3):
        raise CgptError(f"--zero-stage must be 0, 1, 2 or 3, got {stage}")
    if shape.seq_len > shape.config.n_positions:
        raise CgptError(
            f"seq_len {shape.seq_len} exceeds the model's n_positions {shape.config.n_positions}"
        )
    return prec, stage


def _run(
    makers: list[Callable[[], _Runner]], x, y, dev: torch.device, warmup: int, steps: int
) -> tuple[list[_Runner], dict[str, float]]:
    """Build and warm up each runner in turn (its resident state is measured), then time
    ``steps`` steps interleaved (ours, HF, ours, HF, ...); returns (runners, last losses)."""
    losses: dict[str, float] = {}
    runners: list[_Runner] = []
    for make in makers:
        before = _allocated(dev)
        r = make()
        for _ in range(warmup):
            losses[r.name] = r.step(x, y, timed=False)
        r.state_bytes = _allocated(dev) - before
        runners.append(r)
    for _ in range(steps):
        for r in runners:
            before = _allocated(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            losses[r.name] = r.step(x, y, timed=True)
            r.peak_mem = max(r.peak_mem, _peak_memory(dev, r.state_bytes, before))
    return runners, losses


def bench(
    target: str = "111M",
    steps: int = 10,
    warmup: int = 2,
    seq_len: int | None = None,
    micro_batch: int | None = None,
    compare_hf: bool = False,
    compile_: bool = False,
    device: str = "auto",
    precision: str = "auto",
    n_layer: int | None = None,
    zero_stage: int | None = None,
    hf_deepspeed: bool = False,
    fused_loss: bool = True,
    seed: int = 0,
) -> dict:
    """Time `steps` training steps (after `warmup`); returns a JSON-ready dict.

    precision/zero_stage "auto"/None: the run config's (a size: bf16, ZeRO-1, as
    ``cgpt train``'s defaults). hf_deepspeed: the transformers model runs in the same
    DeepSpeed engine as ours instead of HF Trainer's loop (compares the models alone)."""
    if steps < 1 or warmup < 0:
        raise CgptError("--steps must be at least 1 and --warmup at least 0")
    dev = _device(device)
    shape = resolve_shape(target, seq_len, micro_batch, n_layer)
    prec, stage = _check_shape(shape, precision, zero_stage)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    makers: list[Callable[[], _Runner]] = [
        lambda: _EngineRunner(
            shape.config, dev, prec, stage, shape.micro_batch, compile_, fused_loss=fused_loss
        )
    ]
    if compare_hf and hf_deepspeed:
        makers.append(
            lambda: _EngineRunner(
                shape.config, dev, prec, stage, shape.micro_batch, compile_, hf=True
            )
        )
    elif compare_hf:
        makers.append(lambda: _HFRunner(shape.config, dev, prec, compile_))
    g = torch.Generator().manual_seed(seed)
    V = shape.config.vocab_size
    batch = torch.randint(0, V, (shape.micro_batch, shape.seq_len + 1), generator=g).to(dev)
    x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    runners, losses = _run(makers, x, y, dev, warmup, steps)
    peak = detect_peak_flops() if dev.type == "cuda" else None
    results = [_report(r, shape, peak) for r in runners]
    out = {
        "shape": shape.name,
        "n_layer": shape.config.n_layer,
        "n_embd": shape.config.n_embd,
        "n_head": shape.config.n_head,
        "vocab_size": V,
        "params": num_params(shape.config),
        "seq_len": shape.seq_len,
        "micro_batch": shape.micro_batch,
        "device": _dev_name(dev),
        "precision": prec,
        "zero_stage": stage,
        "compile": compile_,
        "fused_loss": fused_loss,
        "reference_loop": ("deepspeed" if hf_deepspeed else "hf-trainer") if compare_hf else None,
        "peak_flops": peak,
        "results": results,
        "final_loss": losses,
    }
    if compare_hf:
        ours, ref = results
        out["speedup_vs_hf"] = ref["step_ms"] / ours["step_ms"]
    return out


def _dev_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_report(r: dict) -> str:
    lines = [
        f"{r['shape']}: {r['params'] / 1e6:.1f}M params, L={r['n_layer']} d={r['n_embd']}, "
        f"seq {r['seq_len']} x micro-batch {r['micro_batch']}, {r['precision']}, "
        f"ZeRO-{r['zero_stage']}"
        f"{', compiled' if r['compile'] else ''}"
        f"{'' if r['fused_loss'] else ', plain loss'} on {r['device']}"
    ]
    mem = "process RSS" if r["device"].startswith("cpu") else "peak mem"  # see _peak_memory
    for m in r["results"]:
        mfu = f"{m['mfu']:.1%}" if m["mfu"] is not None else "n/a"
        lines.append(
            f"  {m['model']:<13} {m['tokens_per_s']:>11,.0f} tok/s  step "
            f"{m['step_ms']:>9.1f} ms  {m['tflops']:7.2f} TFLOP/s  MFU {mfu:>6}  "
            f"{mem} {m['peak_memory_bytes'] / 2**30:6.2f} GiB"
        )
    if "speedup_vs_hf" in r:
        loop = (
            "both in the same DeepSpeed engine"
            if r["reference_loop"] == "deepspeed"
            else "transformers in HF Trainer's loop"
        )
        lines.append(f"  ours / transformers: {r['speedup_vs_hf']:.2f}x ({loop})")
    return "\n".join(lines)
