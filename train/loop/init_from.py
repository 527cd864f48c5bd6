"""Continued pretraining, the trainer's side: a run whose weights start from published or
earlier weights (``init: {source: SRC}``, resolved by :mod:`cgpt.train.source`; its model
section is filled from the source by :func:`cgpt.train.source.fill.fill_model_section`).

- :func:`check_data_vocab`: before the data is opened, its vocab must fit the source's.
- :func:`load_init` (from the trainer, before the DeepSpeed engine is built, on every rank:
  each rank builds the same model, so every ZeRO stage and rank count works): the weights
  are copied into the GPT, the source's tokenizer is checked against the data's and
  recorded, and ``init`` gets ``path``, ``sha256`` (of the weight files), ``what`` and
  ``tokenizer``: config.yaml and summary.json record the parent. A resumed run keeps that
  record and never rereads the source.
- :func:`step0_check` (fresh runs only): the loaded model's loss on the first training batch,
  compared for a HF source with transformers' loss on the same batch (fp32: within 1e-5;
  a mismatch stops the run with both numbers), logged as a step-0 row in metrics.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cgpt.model.errors import CgptError
from cgpt.model.hf import load_hf_model, transformers_available
from cgpt.model.io import is_tied
from cgpt.model.sizes import vocab_fits
from cgpt.train.config import RUN_CONFIG, read_yaml
from cgpt.train.data.shards import open_token_data
from cgpt.train.distributed import all_sum
from cgpt.train.plan.datacheck import wrong_tokenizer
from cgpt.train.plan.schedule import global_batch_at
from cgpt.train.source.fill import FUNCTIONAL, STRUCTURAL, mup_reason
from cgpt.train.source.model_source import HF_KINDS, load_model_of, resolve
from cgpt.train.source.tokenizer import check_tokenizer

# |our step-0 loss - transformers'| allowed: fp32 (the issue's bound), else the rounding of
# a bf16/fp16 forward pass (ours runs in the engine's precision, transformers' in fp32)
STEP0_ATOL = {"fp32": 1e-5, "bf16": 5e-2, "fp16": 2e-2}


def check_data_vocab(cfg) -> None:
    """Before the data is opened for a run with ``init.source``: every data folder's vocab
    must fit the source's (the model's vocab is the source's), else the one fix is to
    re-tokenize the data with the source's tokenizer (the command, ready to paste)."""
    d = cfg.data
    paths = [d.path] if d.path else [s.path for s in d.sources or []]
    for path in paths:
        data = open_token_data(path, verify=False)
        if not vocab_fits(cfg.model.vocab_size, data.vocab_size):
            src = resolve(cfg.init.source, weights=False)
            raise CgptError(wrong_tokenizer(cfg.init.source, src, data))


def load_init(run, model) -> None:
    """Trainer hook, before the engine is built: copy the source's weights into ``model``
    (a fresh run) and record the parent in ``run.cfg.init``; a resumed run keeps the record
    its config.yaml has and does not read the source."""
    cfg = run.cfg
    if cfg.init is None:
        return
    if run.resume_from is not None:
        _keep_record(run)
        return
    src = resolve(cfg.init.source)
    check_tokenizer(src, run.data)
    loaded, what = load_model_of(src)
    if not is_tied(loaded):
        raise CgptError(
            f"init.source {src.spec} has an lm_head of its own (untied from the embedding); "
            "cgpt models tie them, so its weights cannot be continued exactly"
        )
    if (loaded.config.mup is None) != (cfg.model.mup is None):
        raise CgptError(mup_reason(src.spec, loaded.config.mup is not None))
    for key in STRUCTURAL + FUNCTIONAL:
        if getattr(loaded.config, key) != getattr(cfg.model, key):
            raise CgptError(
                f"model.{key} is {getattr(cfg.model, key)!r} but init.source {src.spec} "
                f"has {getattr(loaded.config, key)!r}"
            )
    sd = loaded.state_dict()
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CgptError(
            f"init.source {src.spec}: weights do not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    cfg.init = type(cfg.init)(
        **{
            **cfg.init.model_dump(),
            "path": str(src.path.resolve()),
            "sha256": src.sha256,
            "what": what,
            "tokenizer": str(src.tokenizer.resolve()) if src.tokenizer else None,
        }
    )
    if run.tokenizer_dir is None and src.tokenizer is not None:
        run.tokenizer_dir = str(src.tokenizer)  # the export ships the source's tokenizer
    run.init_kind = src.kind


def _keep_record(run) -> None:
    """On --resume: the parent recorded when the run started (config.yaml's init)."""
    saved = run.run_dir / RUN_CONFIG
    if not saved.is_file():
        return
    rec = (read_yaml(saved) or {}).get("init") or {}
    if rec.get("source") == run.cfg.init.source and rec.get("sha256"):
        run.cfg.init = type(run.cfg.init)(**{**run.cfg.init.model_dump(), **rec})


# ---- step 0 ----------------------------------------------------------------------------------
@torch.no_grad()
def _hf_loss(folder: Path, micro, device) -> float:
    hf = load_hf_model(folder).to(device)
    s = 0.0
    for x, y in micro:
        logits = hf(x.to(device)).logits.float()
        s += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten()).double().item()
    del hf
    return s / len(micro)


@torch.no_grad()
def step0_check(run, engine, loader) -> dict:
    """The loaded model's mean loss on the first training batch (all ranks), before any
    update; for a HF source with transformers importable, rank 0 also runs transformers on
    its share of that batch and the two must agree (STEP0_ATOL). Returns the metrics row."""
    cfg, dev = run.cfg, run.dist.device
    state = loader.state_dict()
    micro = loader.next_step(global_batch_at(cfg.plan, 0), cfg.runtime.micro_batch)
    loader.load_state_dict(state)  # the first step trains on the same batch
    engine.eval()
    try:
        s = sum(float(engine(x.to(dev), y.to(dev)).double()) for x, y in micro)
    finally:
        engine.train()
    ours_local = s / len(micro)
    theirs = math.nan
    compare = (
        cfg.init.check
        and getattr(run, "init_kind", None) in HF_KINDS
        and run.dist.is_main
        and transformers_available()
    )
    if compare:
        theirs = _hf_loss(Path(cfg.init.path), micro, dev)
    atol = STEP0_ATOL[cfg.runtime.precision]
    bad = compare and not abs(ours_local - theirs) <= atol
    tot, n, nbad, o, t, did = all_sum(
        [s, len(micro), float(bad), ours_local * compare, theirs if compare else 0.0, compare],
        dev,
    )
    if nbad:
        raise CgptError(
            f"step 0: the loaded model's loss on the first batch is {o:.7f} but transformers "
            f"gives {t:.7f} for {cfg.init.source} (|diff| {abs(o - t):.2e} > {atol:g}, "
            f"{cfg.runtime.precision}): the weights were not loaded faithfully; nothing trained"
        )
    row = {"step": 0, "tokens": 0, "init_loss": tot / n, "init_source": cfg.init.source}
    if did:
        row.update(init_loss_rank0=o, init_hf_loss=t, init_loss_diff=abs(o - t))
    return row


__all__ = ["STEP0_ATOL", "check_data_vocab", "load_init", "step0_check"]
