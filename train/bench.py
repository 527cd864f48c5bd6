"""Training-step benchmark: tokens/s, step time, peak memory and MFU on synthetic tokens.

``bench(...)`` times full optimizer steps (forward, backward, grad clip, AdamW) of our GPT
and, side by side, of ``transformers.GPT2LMHeadModel`` (SDPA attention) of the same shape
with the same optimizer and batch, in the same process. Steps are interleaved (ours, HF,
ours, HF, ...) after a warm-up, so machine noise hits both alike; the ratio is
median-step-time HF / ours. MFU follows 6N + 12·L·T·d per token against the device table's
bf16 peak (REFERENCE.md, Throughput references); it is None on CPU.
On CUDA the step runs under bf16 autocast with a fused AdamW (as the trainer's FusedAdam).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cgpt.model import GPT, GPTConfig, flops_per_token_mfu, num_params
from cgpt.model.errors import CgptError


@dataclass
class Shape:
    name: str
    config: GPTConfig
    seq_len: int
    micro_batch: int


def resolve_shape(target: str, seq_len: int | None, micro_batch: int | None,
                  n_layer: int | None = None) -> Shape:
    """A published size ('111M', 'cerebras-gpt-1.3b') or a run config YAML."""
    overrides = {"n_layer": n_layer} if n_layer else {}
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        from .runconfig import load_run_config

        cfg = load_run_config(target)
        gcfg = cfg.model.build()
        if overrides:
            gcfg = GPTConfig.from_dict({**gcfg.to_dict(), **overrides})
        return Shape(Path(target).stem, gcfg, seq_len or cfg.plan.seq_len,
                     micro_batch or cfg.runtime.micro_batch)
    gcfg = GPTConfig.from_name(target, **overrides)
    return Shape(target, gcfg, seq_len or gcfg.n_positions, micro_batch or 1)


def _hf_model(cfg: GPTConfig):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise CgptError("the side-by-side benchmark needs transformers: "
                        "pip install 'cgpt[hf]'") from None
    from cgpt.model.hf import gpt_config_to_hf

    d = gpt_config_to_hf(cfg)
    d.pop("dtype", None), d.pop("torch_dtype", None)
    hcfg = GPT2Config(**d)
    hcfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hcfg)
    model.config.use_cache = False
    return model


class _Runner:
    """One model + AdamW + a step function; records step times."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, bf16: bool,
                 compile_: bool, hf: bool):
        self.name, self.device, self.bf16, self.hf = name, device, bf16, hf
        self.model = model.to(device).train()
        # the trainer's CPU/GPU optimizer (fused AdamW), identical for both models
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                     weight_decay=0.1, fused=True)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.times: list[float] = []
        self.peak_mem = 0

    def _loss(self, x, y):
        if self.hf:  # the labels are already shifted: take HF's logits, same fp32 loss as ours
            logits = self.fwd(input_ids=x).logits
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        return self.fwd(x, y)[1]

    def step(self, x, y, timed: bool) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self._loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if timed:
            self.times.append(dt)
        return float(loss.detach())


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


def _report(r: _Runner, shape: Shape, peak: float | None) -> dict:
    med = statistics.median(r.times)
    tokens = shape.micro_batch * shape.seq_len
    tps = tokens / med
    fpt = flops_per_token_mfu(shape.config, shape.seq_len)
    return {"model": r.name, "step_ms": med * 1e3, "step_ms_min": min(r.times) * 1e3,
            "tokens_per_s": tps, "tflops": fpt * tps / 1e12,
            "mfu": fpt * tps / peak if peak else None, "peak_memory_bytes": r.peak_mem,
            "steps": len(r.times)}


def bench(target: str = "111M", steps: int = 10, warmup: int = 2, seq_len: int | None = None,
          micro_batch: int | None = None, compare_hf: bool = False, compile_: bool = False,
          device: str = "auto", precision: str = "auto", n_layer: int | None = None,
          seed: int = 0) -> dict:
    """Time `steps` training steps (after `warmup`); returns a JSON-ready dict."""
    from .devices import detect_peak_flops

    if steps < 1 or warmup < 0:
        raise CgptError("--steps must be at least 1 and --warmup at least 0")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and
                                                      torch.cuda.is_available()) else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CgptError("--device cuda but no CUDA GPU is visible")
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    shape = resolve_shape(target, seq_len, micro_batch, n_layer)
    if shape.seq_len > shape.config.n_positions:
        raise CgptError(f"seq_len {shape.seq_len} exceeds the model's n_positions "
                        f"{shape.config.n_positions}")
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    runners = [_Runner("cgpt", GPT(shape.config), dev, bf16, compile_, hf=False)]
    if compare_hf:
        runners.append(_Runner("transformers", _hf_model(shape.config), dev, bf16, compile_,
                               hf=True))
    g = torch.Generator().manual_seed(seed)
    V = shape.config.vocab_size
    batch = torch.randint(0, V, (shape.micro_batch, shape.seq_len + 1), generator=g).to(dev)
    x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    losses = {}
    for i in range(warmup + steps):  # interleaved: ours, HF, ours, HF, ...
        for r in runners:
            if dev.type == "cuda" and i == warmup:
                torch.cuda.reset_peak_memory_stats(dev)
            losses[r.name] = r.step(x, y, timed=i >= warmup)
            r.peak_mem = max(r.peak_mem, _peak_memory(dev))
    peak = detect_peak_flops() if dev.type == "cuda" else None
    out = {"shape": shape.name, "n_layer": shape.config.n_layer, "n_embd": shape.config.n_embd,
           "n_head": shape.config.n_head, "vocab_size": V, "params": num_params(shape.config),
           "seq_len": shape.seq_len, "micro_batch": shape.micro_batch, "device": _dev_name(dev),
           "precision": "bf16" if bf16 else "fp32", "compile": compile_,
           "peak_flops": peak, "results": [_report(r, shape, peak) for r in runners],
           "final_loss": losses}
    if compare_hf:
        ours, ref = out["results"]
        out["speedup_vs_hf"] = ref["step_ms"] / ours["step_ms"]
    return out


def _dev_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_report(r: dict) -> str:
    lines = [f"{r['shape']}: {r['params'] / 1e6:.1f}M params, L={r['n_layer']} d={r['n_embd']}, "
             f"seq {r['seq_len']} x micro-batch {r['micro_batch']}, {r['precision']}"
             f"{', compiled' if r['compile'] else ''} on {r['device']}"]
    for m in r["results"]:
        mfu = f"{m['mfu']:.1%}" if m["mfu"] is not None else "n/a"
        lines.append(f"  {m['model']:<13} {m['tokens_per_s']:>11,.0f} tok/s  step "
                     f"{m['step_ms']:>9.1f} ms  {m['tflops']:7.2f} TFLOP/s  MFU {mfu:>6}  "
                     f"peak mem {m['peak_memory_bytes'] / 2**30:6.2f} GiB")
    if "speedup_vs_hf" in r:
        lines.append(f"  ours / transformers: {r['speedup_vs_hf']:.2f}x")
    return "\n".join(lines)
