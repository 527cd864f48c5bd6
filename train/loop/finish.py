"""A run's two ends, apart from the step loop: the start-up banner, and at the end the final
model files (model.safetensors, hf/), summary.json, and the one line a failed write there
gives. ``run`` is the checked run (cgpt.train.loop.startup) and ``state`` the loop's
(cgpt.train.loop.hooks: step, tokens, losses, saved checkpoint)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cgpt.model import GPT
from cgpt.model.hf import export_hf
from cgpt.model.io import LM_HEAD, build_from_state_dict, is_tied, save_model
from cgpt.model.sizes import num_params
from cgpt.train.checkpoints.resume import resume_command
from cgpt.train.config import write_text_atomic
from cgpt.train.data.mixture import MixtureLoader
from cgpt.train.loop.hooks import LoopState
from cgpt.train.loop.startup import Run
from cgpt.train.metrics import plot_loss
from cgpt.train.plan.schedule import global_batch_at, tokens_before
from cgpt.train.provenance import provenance
from cgpt.train.write_errors import WriteFailed, writing


def final_model(run: Run, engine) -> GPT | None:
    """Rank 0: the trained model as a plain GPT apart from the engine (every rank calls).

    Under ZeRO-3 DeepSpeed's own consolidation gathers one layer at a time into a CPU state
    dict on rank 0 (what HF Accelerate's ``get_state_dict`` uses), so the export never
    mutates partitioned parameters: upcasting them for the HF comparison made leaving
    ``GatheredParameters`` fail ("Cannot free a ZeRO-3 parameter") in bf16. Stages 0-2 hold
    the full module on every rank; its tensors are shared, not copied (the comparison's
    upcast replaces the copy's tensors and leaves the engine's alone)."""

    module = engine.module
    if run.cfg.runtime.zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # all ranks take part
        device = torch.device("cpu")
    else:
        sd = {k: v.detach() for k, v in module.state_dict().items()} if run.dist.is_main else None
        device = run.dist.device
    if sd is None:
        return None
    tied = is_tied(module)
    sd = {k: v for k, v in sd.items() if not (tied and k == LM_HEAD)}
    return build_from_state_dict(module.config, sd, tied, "the trained model", device)


def export_final(run: Run, engine) -> None:
    """model.safetensors and the HF folder, from a copy of the trained model (rank 0)."""

    model = final_model(run, engine)
    if model is None:
        return
    with writing(run.run_dir / "model.safetensors"):
        save_model(model, run.run_dir / "model.safetensors")
    if run.cfg.runtime.export_hf:
        if model.config.mup is not None:  # folding the μP multipliers into the weights is
            model.float()  # exact in fp32 only (bf16 rounding failed the logits check)
        with writing(run.run_dir / "hf"):
            export_hf(
                model, run.run_dir / "hf", tokenizer_dir=run.tokenizer_dir, verify=True, force=True
            )


def finish(run: Run, state: LoopState, loader: MixtureLoader, status: str, t0: float) -> dict:
    """summary.json and loss.png (rank 0); returns the summary."""
    summary = {
        "run_dir": str(run.run_dir),
        "status": status,
        "steps": state.step,
        "tokens": state.tokens,
        "loss": state.loss,
        "val_loss": state.val_loss,
        "checkpoint": str(state.saved) if state.saved else None,
        "data": loader.summary(),  # per source: weight, tokens, samples, epochs
        "wall_s": round(time.time() - t0, 3),
        "cgpt": provenance(),
    }
    if run.cfg.init is not None:  # the parent: source, path, sha256 of its weights
        summary["init"] = run.cfg.init.model_dump()
    if run.dist.is_main:
        import json

        with writing(run.run_dir / "loss.png"):
            plot_loss(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png")
        with writing(run.run_dir / "summary.json"):
            write_text_atomic(run.run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def write_failed_message(run: Run, state: LoopState | None, e: WriteFailed) -> str:
    """One line: what could not be written and why, what is intact, the command to go on."""
    if state is None or state.saved is None:
        intact = "no checkpoint was saved yet (the resume starts over)"
    else:
        intact = f"checkpoint {state.saved} (step {state.saved_step}) is intact"
        if Path(e.path).name == "metrics.jsonl":
            intact += " and metrics.jsonl keeps its rows up to it (later steps are redone)"
        elif state.saved_step == state.step:
            intact += ", with every trained step: the resume only writes the final files"
    return (
        f"{e}; {intact}. Free space (or make the folder writable), then continue with: "
        f"{resume_command(run.run_dir, run.dist.world_size)}"
    )


def completed_summary(run: Run) -> dict | None:
    """The summary of a run that already completed (resuming it again changes nothing)."""
    import json

    if run.resume_state.get("step", 0) < run.cfg.plan.steps:
        return None
    try:
        summary = json.loads((run.run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "completed" else None


def banner(run: Run, start: int) -> str:
    """The start-up lines (rank 0, before the first step): what trains, how long, where."""
    cfg, m, rt = run.cfg, run.cfg.model, run.cfg.runtime
    split = run.splits[global_batch_at(cfg.plan, start)]
    end = min(cfg.plan.steps, rt.max_steps or cfg.plan.steps)
    doing = f"{end} step{'s' * (end != 1)}"
    if start >= end:
        doing = f"all {end} steps trained; writing the final files"
    elif start:
        doing = f"step{'s' * (end - start != 1)} {start + 1}-{end} of {cfg.plan.steps}"
    if end < cfg.plan.steps and not start:
        doing += f" of {cfg.plan.steps} (runtime.max_steps)"
    tokens = tokens_before(cfg.plan, end) - tokens_before(cfg.plan, start)
    return "\n".join(
        [
            f"cgpt train: {num_params(m):,} parameters ({m.n_layer} layers, width "
            f"{m.n_embd}, {m.n_head} heads, context {m.n_positions}, vocab {m.vocab_size})",
            f"  {doing}, {tokens:,} tokens; batch {split.global_batch} x {cfg.plan.seq_len} "
            f"tokens (micro-batch {split.micro_batch} x {split.grad_accum} accumulation x "
            f"{run.dist.world_size} rank(s)); peak LR {cfg.plan.lr:g}",
            f"  {rt.precision}, ZeRO-{rt.zero_stage}, {run.dist.device.type}; "
            f"writing to {run.run_dir}",
            "  ETA: after the first steps",
        ]
    )
