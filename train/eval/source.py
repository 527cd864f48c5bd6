"""What ``cgpt eval SRC`` evaluates: SRC resolved to weights, a shape and a tokenizer.

SRC may be

- anything ``cgpt export`` reads (:func:`cgpt.train.source.model_source.load_source`): a cgpt
  model file, a run folder (its final weights or newest complete checkpoint), a checkpoint
  folder ``RUN/checkpoints/step-N``. lm-eval then runs on the model's Hugging Face export
  (:func:`cgpt.model.hf.export_hf` into a temporary folder, verified against the model's own
  logits), exactly as ``lm_eval --model hf --model_args pretrained=FOLDER`` would;
- a Hugging Face GPT-2 folder (config.json + weights, e.g. a local copy of an official
  Cerebras-GPT checkpoint): evaluated as it is;
- ``hf:NAME``: a Hub model id, loaded by lm-eval itself (needs the Hub or the local cache).

The tokenizer is ``--tokenizer DIR``, else for a cgpt SRC the one its run records
(:func:`cgpt.train.source.tokenizer.find_tokenizer`), for an HF folder the folder itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT
from cgpt.train.checks import HF_PREFIX
from cgpt.train.data.tokenizer import load_tokenizer
from cgpt.train.source.digest import HF_WEIGHT_FILES, sha256_file
from cgpt.train.source.model_source import is_hf_folder, load_source
from cgpt.train.source.tokenizer import find_tokenizer

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass
class EvalSource:
    spec: str  # SRC as given
    kind: str  # "cgpt" | "hf" | "hub"
    what: str  # one phrase for the report
    path: Path | None = None  # the resolved model file / folder (None for the Hub)
    model: GPT | None = None  # the loaded GPT (kind "cgpt")
    shape: dict | None = None  # n_layer, n_embd, n_head, vocab_size, n_positions (GPT-2)
    tokenizer: Path | None = None
    hub_name: str | None = None
    source_sha256: str | None = None  # sha256 of SRC's own file, for a model file
    extra: dict = field(default_factory=dict)


def shape_of(cfg) -> dict:
    return {
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
    }


def tokenizer_vocab(tok_dir: Path) -> int:
    """Number of tokens of a tokenizer folder (ours or any Hugging Face one)."""
    return int(load_tokenizer(tok_dir).vocab_size)


def check_tokenizer(tok_dir: Path, vocab_size: int, what: str) -> None:
    """A tokenizer with more tokens than the model has embeddings is not this model's."""
    n = tokenizer_vocab(tok_dir)
    if n > vocab_size:
        raise CgptError(
            f"tokenizer {tok_dir} has {n} tokens but {what} has vocab_size "
            f"{vocab_size}: wrong tokenizer for this model (pass --tokenizer DIR "
            "with the tokenizer it was trained with)"
        )


def _read_hf_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CgptError(
            f"{folder}/config.json is not readable JSON ({e}); not a Hugging Face model folder"
        ) from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise CgptError(f"{folder}/config.json has no model_type; not a Hugging Face model folder")
    return cfg


def open_source(
    spec: str, tokenizer: str | os.PathLike | None = None, need_tokenizer: bool = True
) -> EvalSource:
    """Resolve SRC (see the module docstring); a cgpt SRC is loaded (weights finite)."""
    tok = Path(tokenizer) if tokenizer else None
    if tok is not None and not tok.is_dir():
        raise CgptError(f"tokenizer folder {tok} does not exist")
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX) :].strip()
        if not name:
            raise CgptError("hf: needs a model id, e.g. hf:cerebras/Cerebras-GPT-111M")
        return EvalSource(spec, "hub", f"Hub model {name}", hub_name=name, tokenizer=tok)
    path = Path(spec)
    if not path.exists():
        raise CgptError(
            f"{path} does not exist; SRC is a cgpt model file, run folder or "
            "checkpoint folder, a Hugging Face model folder, or hf:NAME"
        )
    if is_hf_folder(path):
        return _hf_folder(spec, path, tok, need_tokenizer)
    loaded = load_source(path)
    model = loaded.model
    tok = tok or find_tokenizer(path)
    src = EvalSource(
        spec,
        "cgpt",
        loaded.what,
        path=loaded.source,
        model=model,
        shape=shape_of(model.config),
        tokenizer=tok,
    )
    if loaded.source.is_file():
        src.source_sha256 = sha256_file(loaded.source)
    if tok is None:
        if need_tokenizer:
            raise CgptError(
                f"no tokenizer found for {path} (none in its run folder, run "
                "config or data folder); lm-eval needs one: pass --tokenizer DIR"
            )
    else:
        check_tokenizer(tok, model.config.vocab_size, f"the model ({src.what})")
    return src


def _hf_folder(spec: str, path: Path, tok: Path | None, need_tokenizer: bool) -> EvalSource:
    cfg = _read_hf_config(path)
    if not any((path / n).is_file() for n in HF_WEIGHT_FILES):
        raise CgptError(
            f"{path} has a config.json but no weights ({', '.join(HF_WEIGHT_FILES)}); "
            "not a complete Hugging Face model folder"
        )
    shape = None
    if cfg.get("model_type") == "gpt2":
        try:
            shape = {
                "n_layer": int(cfg["n_layer"]),
                "n_embd": int(cfg["n_embd"]),
                "n_head": int(cfg["n_head"]),
                "vocab_size": int(cfg["vocab_size"]),
                "n_positions": int(cfg.get("n_positions", 1024)),
            }
        except (KeyError, TypeError, ValueError):
            raise CgptError(
                f"{path}/config.json lacks GPT-2 shape fields (n_layer, n_embd, n_head, vocab_size)"
            ) from None
    if tok is None and any((path / n).is_file() for n in TOKENIZER_MARKERS):
        tok = path
    if tok is None and need_tokenizer:
        raise CgptError(
            f"{path} holds no tokenizer (tokenizer.json, tokenizer.model or "
            "vocab.json); pass --tokenizer DIR"
        )
    if tok is not None and "vocab_size" in cfg:
        check_tokenizer(tok, int(cfg["vocab_size"]), f"the model in {path}")
    return EvalSource(
        spec,
        "hf",
        f"Hugging Face folder {path} ({cfg.get('model_type')})",
        path=path,
        shape=shape,
        tokenizer=tok,
    )


__all__ = ["EvalSource", "check_tokenizer", "open_source", "shape_of", "tokenizer_vocab"]
