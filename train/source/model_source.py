"""One :class:`ModelSource` for every way a model's weights are named.

SRC (``init.source``, ``cgpt export SRC``, ``cgpt eval SRC``, ``cgpt plan --init-from``) is a
run folder, a checkpoint step, a cgpt model file, a Hugging Face GPT-2 folder or ``hf:NAME``.
:func:`resolve` reads configs only; the weights are read by :func:`load_model_of` and hashed
on first use of ``sha256``. Each kind: docs/DESIGN-NOTES.md, source/model_source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from safetensors import safe_open

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT
from cgpt.model.hf import hf_config_to_gpt, import_hf, read_json
from cgpt.model.io import load_model
from cgpt.model.sizes import PUBLISHED
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints.consolidate import (
    check_complete,
    check_finite,
    consolidate_step,
    run_config_for,
)
from cgpt.train.checks import HF_PREFIX
from cgpt.train.config import parse_run_config, read_yaml
from cgpt.train.plan.rules import RECIPES
from cgpt.train.source.digest import hf_weight_files, weights_sha256
from cgpt.train.source.hub import hub_folder
from cgpt.train.source.tokenizer import find_tokenizer, has_tokenizer

MODEL_FILE = "model.safetensors"  # a run's final weights
_STEP = re.compile(r"^(?:tmp-)?step-(\d+)$")

Kind = Literal["run", "checkpoint", "model-file", "hf-folder", "hub"]
HF_KINDS = ("hf-folder", "hub")  # weights in Hugging Face's layout, read by transformers too


@dataclass
class ModelSource:
    spec: str  # as written (init.source, SRC)
    kind: Kind  # what spec names
    path: Path  # the HF folder, model file or checkpoint folder the weights come from
    shape: GPTConfig
    tokenizer: Path | None  # the tokenizer folder that belongs to the weights
    peak_lr: float | None  # the source's own peak LR, when known (the plan re-warms to it)
    lr_from: str = ""  # where peak_lr comes from

    @property
    def is_hf(self) -> bool:
        return self.kind in HF_KINDS

    def weight_files(self) -> list[Path]:
        """The files the weights are read from (a checkpoint: DeepSpeed's *_states.pt)."""
        if self.path.is_file():
            return [self.path]
        if self.is_hf:
            return hf_weight_files(self.path)
        return sorted(self.path.glob("*_states.pt"))

    @cached_property
    def sha256(self) -> str | None:
        """sha256 of the weight files (:func:`cgpt.train.source.digest.weights_sha256`)."""
        return weights_sha256(self.weight_files())


# ---- resolution (configs only, no weights) -------------------------------------------------
def is_hf_folder(path: Path) -> bool:
    """A Hugging Face folder (config.json), not a cgpt run or checkpoint (config.yaml)."""
    return (
        path.is_dir() and (path / "config.json").is_file() and not (path / "config.yaml").is_file()
    )


def is_checkpoint_dir(folder: Path) -> bool:
    """Whether ``folder`` looks like a trainer checkpoint (published or not)."""
    return folder.is_dir() and (
        bool(_STEP.match(folder.name))
        or any(folder.glob("*_model_states.pt"))
        or (folder / ckpt.STATE).is_file()
    )


def locate_weights(src: str | os.PathLike) -> Path:
    """The model file or checkpoint folder that a cgpt SRC names (see the module docstring)."""
    src = Path(src)
    if not src.exists():
        raise CgptError(f"{src} does not exist")
    if src.is_file():
        return src
    if is_hf_folder(src):
        raise CgptError(
            f"{src} looks like a Hugging Face folder already (config.json); "
            "use `cgpt import-hf` to read it"
        )
    if is_checkpoint_dir(src) and not (src / MODEL_FILE).is_file():
        check_complete(src)
        return src
    if src.name == "checkpoints" and not (src / MODEL_FILE).is_file():  # RUN/checkpoints
        found = ckpt.newest(src)
        if found is None:
            raise CgptError(
                f"{src} holds no complete checkpoint (a save that never finished "
                "leaves only tmp-step-N)"
            )
        return found[1]
    final = src / MODEL_FILE
    found = ckpt.newest(src / "checkpoints")
    if final.is_file():
        # the final weights, unless a checkpoint was published after them (a max_steps stop,
        # then --resume, then a preemption: model.safetensors is the older state)
        if found is None or _mtime(found[1] / ckpt.COMPLETE) <= _mtime(final):
            return final
        return found[1]
    if found is not None:
        return found[1]
    if (src / "checkpoints").is_dir():
        raise CgptError(
            f"{src} has no {MODEL_FILE} and no complete checkpoint under "
            f"{src / 'checkpoints'} (a save that never finished leaves only "
            "tmp-step-N)"
        )
    raise CgptError(
        f"{src} has no {MODEL_FILE} and no checkpoints/step-N; pass a model file, "
        "run folder or checkpoint folder written by cgpt"
    )


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def resolve(spec: str, weights: bool = True) -> ModelSource:
    """What ``init.source`` names: kind, path, shape, tokenizer, original peak LR. An
    ``hf:NAME`` is fetched into the HF cache (with its weights unless ``weights=False``)."""
    spec = str(spec)
    kind: Kind
    if spec.startswith(HF_PREFIX):
        path, kind = hub_folder(spec[len(HF_PREFIX) :], weights), "hub"
    else:
        path, kind = Path(spec).expanduser(), "hf-folder"
        if not path.exists():
            raise CgptError(f"init.source {spec} does not exist")
    if is_hf_folder(path):
        cfg, _ = hf_config_to_gpt(read_json(path / "config.json"), str(path / "config.json"))
        tok = path if has_tokenizer(path) else None
        lr, lr_from = published_lr(cfg)
        return ModelSource(spec, kind, path, cfg, tok, lr, lr_from)
    found = locate_weights(path)
    run_cfg = None
    if found.is_file():
        kind = "model-file" if path.is_file() else "run"
        cfg = model_file_config(found)
        run_dir = found.parent
        if (run_dir / "config.yaml").is_file():  # run/model.safetensors: the run's config
            run_cfg = parse_run_config(read_yaml(run_dir / "config.yaml"), str(run_dir))
        tok = find_tokenizer(run_dir) if run_cfg is not None else None
    else:
        kind = "checkpoint" if found == path else "run"
        run_cfg = run_config_for(found)
        cfg = run_cfg.model
        tok = find_tokenizer(found)
    lr = run_cfg.plan.lr if run_cfg is not None else None
    return ModelSource(spec, kind, found, cfg, tok, lr, "the source run's plan.lr" if lr else "")


def model_file_config(path: Path) -> GPTConfig:
    """The GPTConfig a cgpt model file carries in its safetensors metadata."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return GPTConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, OSError) as e:
        raise CgptError(f"init.source {path} is not a cgpt model file ({e})") from None


def published_lr(cfg: GPTConfig) -> tuple[float | None, str]:
    """The published peak LR of a Cerebras-GPT shape (docs/REFERENCE.md, Training recipe)."""
    for p in PUBLISHED.values():
        if (p.n_layer, p.n_embd, p.n_head) == (cfg.n_layer, cfg.n_embd, cfg.n_head):
            if p.name in RECIPES:
                return RECIPES[p.name].lr, f"Cerebras-GPT-{p.name}'s published peak LR"
    return None, ""


# ---- loading -------------------------------------------------------------------------------
@dataclass
class Loaded:
    model: GPT
    source: Path  # the model file or checkpoint folder the weights came from
    what: str  # e.g. "checkpoint step-8 (ZeRO-1, 2 ranks, consolidated)"


def load_source(src: str | os.PathLike) -> Loaded:
    """The GPT that a cgpt SRC names (:func:`locate_weights`); weights must be finite."""
    path = locate_weights(src)
    if path.is_file():
        model = load_model(path)
        check_finite(dict(model.state_dict()), path)
        return Loaded(model, path, f"model file {path}")
    model, info = consolidate_step(path)
    return Loaded(model, path, f"checkpoint {path} ({info})")


def load_model_of(src: ModelSource) -> tuple[GPT, str]:
    """(GPT with the source's weights, description)."""
    if src.is_hf:
        return import_hf(src.path), f"Hugging Face folder {src.path}"
    loaded = load_source(src.path)
    return loaded.model, loaded.what


__all__ = [
    "HF_KINDS",
    "MODEL_FILE",
    "Kind",
    "Loaded",
    "ModelSource",
    "is_checkpoint_dir",
    "is_hf_folder",
    "load_model_of",
    "load_source",
    "locate_weights",
    "model_file_config",
    "published_lr",
    "resolve",
]
