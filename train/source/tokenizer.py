"""The tokenizer that belongs to a model source: finding it, and refusing data that another
tokenizer made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cgpt.model.errors import CgptError
from cgpt.model.hf import PROBE_TEXT
from cgpt.train.config import tokenizer_of
from cgpt.train.data.tokenizer import load_tokenizer
from cgpt.train.plan.datacheck import reprepare_command

if TYPE_CHECKING:
    from cgpt.train.source.model_source import ModelSource


def has_tokenizer(folder: Path) -> bool:
    """Whether a Hugging Face folder ships a tokenizer (tokenizer.json or GPT-2's BPE files)."""
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def find_tokenizer(src: str | os.PathLike) -> Path | None:
    """The tokenizer folder that belongs to SRC's run, if one can be found: ``tokenizer/``
    in the folder (or its run), the run config's ``data.tokenizer``, or the tokenizer
    recorded in the data folder's ``meta.json``."""
    folder = Path(src)
    if not folder.is_dir():  # a bare model file: only --tokenizer, no guessing from its folder
        return None
    runs = [folder, folder.parent.parent] if folder.parent.name == "checkpoints" else [folder]
    for run in runs:
        if (run / "tokenizer" / "tokenizer.json").is_file():
            return run / "tokenizer"
        try:
            data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        tok = tokenizer_of(data)  # the same rule the trainer uses
        if tok and Path(tok).is_dir():
            return Path(tok)
    return None


def check_tokenizer(src: ModelSource, data) -> None:
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


__all__ = ["check_tokenizer", "find_tokenizer", "has_tokenizer"]
