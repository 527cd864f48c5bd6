"""Continued pretraining: a run whose weights start from published or earlier weights.

A run config's ``init: {source: SRC}`` names them. SRC is

- a Hugging Face GPT-2 folder (config.json + model.safetensors / shards / pytorch_model.bin,
  e.g. a downloaded official Cerebras-GPT checkpoint), read by :mod:`cgpt.model.hf`;
- ``hf:NAME`` (``hf:cerebras/Cerebras-GPT-111M``): that Hub repository through
  ``huggingface_hub.snapshot_download`` (its cache; offline and not cached is one line);
- a cgpt model file, a run folder or a checkpoint ``RUN/checkpoints/step-N``, read by
  :mod:`cgpt.train.checkpoints.consolidate` (any ZeRO stage or rank count).

What happens where:

- :func:`fill_model_section` (the trainer's entry, once per run, on the raw YAML before
  ``parse_run_config``, which reads nothing): the run's model section is the
  source's; an explicit model field that contradicts it (a shape field, or μP on one side
  only) is one line naming the field. Dropout and the init scales may be set freely.
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

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError, ConfigError
from cgpt.model.hf import (
    PROBE_TEXT,
    hf_config_to_gpt,
    import_hf,
    load_hf_model,
    read_json,
    transformers_available,
)
from cgpt.model.io import is_tied
from cgpt.model.sizes import PUBLISHED, vocab_fits
from cgpt.train.checkpoints.consolidate import (
    find_tokenizer,
    load_source,
    resolve_source,
    run_config_for,
)
from cgpt.train.config import RUN_CONFIG, parse_run_config, read_yaml
from cgpt.train.data.shards import open_token_data
from cgpt.train.data.tokenizer import load_tokenizer
from cgpt.train.hub_cli import download_command
from cgpt.train.loop.distributed import all_sum
from cgpt.train.plan.datacheck import reprepare_command, wrong_tokenizer
from cgpt.train.plan.rules import RECIPES
from cgpt.train.plan.schedule import global_batch_at

HF_PREFIX = "hf:"
# the fields that fix the weights' shapes or the function they compute: taken from the source
STRUCTURAL = ("n_layer", "n_embd", "n_head", "n_inner", "n_positions", "vocab_size")
FUNCTIONAL = ("layer_norm_epsilon",)
# |our step-0 loss - transformers'| allowed: fp32 (the issue's bound), else the rounding of
# a bf16/fp16 forward pass (ours runs in the engine's precision, transformers' in fp32)
STEP0_ATOL = {"fp32": 1e-5, "bf16": 5e-2, "fp16": 2e-2}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_META = ["*.json", "merges.txt", "vocab.json", "*.model"]


@dataclass
class Source:
    spec: str  # as written in init.source
    path: Path  # the HF folder, model file or checkpoint folder the weights come from
    kind: str  # "hf" or "cgpt"
    model: GPTConfig
    tokenizer: Path | None  # the tokenizer folder that belongs to the weights
    peak_lr: float | None  # the source's own peak LR, when known (the plan re-warms to it)
    lr_from: str = ""  # where peak_lr comes from


# ---- resolution (light: configs only, no weights) ------------------------------------------
def hub_folder(name: str, weights: bool = True) -> Path:
    """The local snapshot of Hub repository ``name`` (downloaded once into the HF cache;
    offline it must be cached). Weights: safetensors if the repo has them, else .bin."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CgptError(f"hf:{name} needs huggingface_hub (pip install 'cgpt[hf]')") from None
    patterns = _HUB_META + (["*.safetensors"] if weights else [])
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
        if weights and not any(folder.glob("*.safetensors")):
            folder = Path(
                snapshot_download(name, allow_patterns=_HUB_META + ["pytorch_model*.bin"])
            )
    except Exception as e:  # offline, unknown repo, gated, network: all one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CgptError(
            f"init.source hf:{name}: cannot get it from the Hugging Face Hub "
            f"({type(e).__name__}: {first}); go online once (it is cached after), or "
            f"download it ({download_command(name)}) and use DIR"
        ) from None
    return folder


def resolve(spec: str, weights: bool = True) -> Source:
    """What ``init.source`` names: kind, path, model config, tokenizer, original peak LR."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        path = hub_folder(spec[len(HF_PREFIX) :], weights)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise CgptError(f"init.source {spec} does not exist")
    if path.is_dir() and (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        cfg, _ = hf_config_to_gpt(read_json(path / "config.json"), str(path / "config.json"))
        tok = path if _has_tokenizer(path) else None
        lr, lr_from = _published_lr(cfg)
        return Source(spec, path, "hf", cfg, tok, lr, lr_from)
    found = resolve_source(path)
    run_cfg = None
    if found.is_file():
        cfg = _model_file_config(found)
        run_dir = found.parent
        if (run_dir / "config.yaml").is_file():  # run/model.safetensors: the run's config
            run_cfg = parse_run_config(read_yaml(run_dir / "config.yaml"), str(run_dir))
        tok = find_tokenizer(run_dir) if run_cfg is not None else None
    else:
        run_cfg = run_config_for(found)
        cfg = run_cfg.model
        tok = find_tokenizer(found)
    lr = run_cfg.plan.lr if run_cfg is not None else None
    return Source(spec, found, "cgpt", cfg, tok, lr, "the source run's plan.lr" if lr else "")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _model_file_config(path: Path) -> GPTConfig:
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return GPTConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, OSError) as e:
        raise CgptError(f"init.source {path} is not a cgpt model file ({e})") from None


def _published_lr(cfg: GPTConfig) -> tuple[float | None, str]:
    """The published peak LR of a Cerebras-GPT shape (docs/REFERENCE.md, Training recipe)."""
    for p in PUBLISHED.values():
        if (p.n_layer, p.n_embd, p.n_head) == (cfg.n_layer, cfg.n_embd, cfg.n_head):
            if p.name in RECIPES:
                return RECIPES[p.name].lr, f"Cerebras-GPT-{p.name}'s published peak LR"
    return None, ""


# ---- the model section ---------------------------------------------------------------------
def _mup_reason(spec: str, source_mup: bool) -> str:
    if source_mup:
        return (
            f"init.source {spec} is a μP model but the model section has no mup: μP scales "
            "the embeddings and logits and attention by 1/d_head, so its weights compute "
            "another function without those multipliers (and their LRs differ); keep the "
            "source's mup section, or export it to HF first (the multipliers are folded in)"
        )
    return (
        f"init.source {spec} is a standard-parametrization model but the model section sets "
        "mup: the μP multipliers would change the function its weights compute and the "
        "per-layer LRs they were trained with; drop model.mup"
    )


def fill_model_section(data: dict) -> dict:
    """A raw run-config dict with its model section taken from ``init.source``; an explicit
    model field that contradicts the source raises ConfigError naming it. A run folder's
    record (``init.sha256`` set) is taken as it is: the source is not read again."""
    init = data.get("init")
    if not isinstance(init, dict) or not init.get("source"):
        return data
    given = data.get("model") or {}
    if not isinstance(given, dict):
        return data  # pydantic reports the bad model section
    if init.get("sha256") and given:
        return data
    try:
        src = resolve(init["source"], weights=False)
    except CgptError as e:
        raise ConfigError(str(e)) from None
    theirs = src.model.to_dict()
    if given.get("mup") is not None and "mup" not in theirs:
        raise ConfigError(_mup_reason(src.spec, False))
    if "mup" in theirs and "mup" in given and given["mup"] is None:
        raise ConfigError(_mup_reason(src.spec, True))
    if "mup" in theirs and given.get("mup") is not None and given["mup"] != theirs["mup"]:
        raise ConfigError(
            f"model.mup is {given['mup']!r} but init.source {src.spec} was trained with "
            f"mup {theirs['mup']!r}; drop model.mup (it is taken from the source)"
        )
    for key in STRUCTURAL + FUNCTIONAL:
        if given.get(key) is not None and given[key] != theirs.get(key):
            raise ConfigError(
                f"model.{key} is {given[key]!r} but init.source {src.spec} has {key} = "
                f"{theirs.get(key)!r}; drop model.{key} (the model section is taken from "
                "the source)"
            )
    return {**data, "model": {**theirs, **{k: v for k, v in given.items() if v is not None}}}


# ---- loading -------------------------------------------------------------------------------
def _weight_files(src: Source) -> list[Path]:
    if src.path.is_file():
        return [src.path]
    if src.kind == "hf":
        for single in _WEIGHT_FILES:
            if (src.path / single).is_file():
                return [src.path / single]
            index = src.path / f"{single}.index.json"
            if index.is_file():
                import json

                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return [index] + [src.path / s for s in shards]
        return []
    return sorted(src.path.glob("*_states.pt"))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the one weights file (as `sha256sum FILE`, and as the Hub shows an LFS
    file's); of several, the sha256 of their `sha256sum` lines sorted by name."""
    if len(files) == 1:
        return _sha256_file(files[0])
    lines = "".join(f"{_sha256_file(p)}  {p.name}\n" for p in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_source_model(src: Source):
    """(GPT with the source's weights, description)."""
    if src.kind == "hf":
        return import_hf(src.path), f"Hugging Face folder {src.path}"
    loaded = load_source(src.path)
    return loaded.model, loaded.what


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


def check_tokenizer(src: Source, data) -> None:
    """The data must have been tokenized by the source's tokenizer (same files, or the same
    vocab, eos and encodings when the files differ, e.g. vocab.json+merges.txt against
    tokenizer.json); else the refusal prints the `cgpt prepare` that re-tokenizes it.
    `cgpt plan --init-from` checks this too."""
    if getattr(data, "sources", None):  # a mixture: every source has the same tokenizer
        data = data.sources[0].data
    fingerprint = getattr(data, "fingerprint", None)
    tok_dir = getattr(data, "tokenizer_dir", None)
    if src.tokenizer is None or fingerprint is None:
        return
    theirs = load_tokenizer(src.tokenizer)
    if theirs.fingerprint == fingerprint:
        return
    ours = load_tokenizer(tok_dir) if tok_dir and Path(tok_dir).is_dir() else None
    same = (
        ours is not None
        and theirs.vocab_size == ours.vocab_size == data.vocab_size
        and theirs.eos_id == ours.eos_id == data.eos_id
        and theirs.encode(PROBE_TEXT) == ours.encode(PROBE_TEXT)
        and getattr(theirs, "tok", None) is not None
        and getattr(ours, "tok", None) is not None
        and theirs.tok.get_vocab() == ours.tok.get_vocab()
    )
    if not same:
        raise CgptError(
            f"the data in {getattr(data, 'dir', '?')} was tokenized with {tok_dir} "
            f"(fingerprint {str(fingerprint)[:12]}), not with init.source's tokenizer "
            f"{src.tokenizer}: the token ids would mean other words to the loaded model; "
            f"re-tokenize it with the source's tokenizer: "
            f"{reprepare_command(data, src.tokenizer)}"
        )


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
    loaded, what = load_source_model(src)
    if not is_tied(loaded):
        raise CgptError(
            f"init.source {src.spec} has an lm_head of its own (untied from the embedding); "
            "cgpt models tie them, so its weights cannot be continued exactly"
        )
    if (loaded.config.mup is None) != (cfg.model.mup is None):
        raise CgptError(_mup_reason(src.spec, loaded.config.mup is not None))
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
    files = _weight_files(src)
    cfg.init = type(cfg.init)(
        **{
            **cfg.init.model_dump(),
            "path": str(src.path.resolve()),
            "sha256": weights_sha256(files) if files else None,
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
    import torch.nn.functional as F

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
        and getattr(run, "init_kind", None) == "hf"
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


__all__ = [
    "Source",
    "fill_model_section",
    "hub_folder",
    "load_init",
    "load_source_model",
    "resolve",
    "step0_check",
    "weights_sha256",
]
