"""The sha256 of a model's weight files: what a run records as its parent (``init.sha256``)
and what ``cgpt eval`` reports (``weights_sha256``), one rule for both."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

# a Hugging Face folder's weights, in the order transformers' from_pretrained looks for them:
# one file, or an index (``NAME.index.json``) of shards
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHT_FILES = tuple(n for w in HF_WEIGHTS for n in (w, f"{w}.index.json"))


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """``sha256sum FILE``, read in blocks (weights can be larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: the single file, else the index and its
    shards; [] when it holds none."""
    for single in HF_WEIGHTS:
        if (folder / single).is_file():
            return [folder / single]
        index = folder / f"{single}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [index] + [folder / s for s in shards]
    return []


def weights_sha256(weights: Path | Sequence[Path]) -> str | None:
    """sha256 of the one weights file (as `sha256sum FILE`, and as the Hub shows an LFS
    file's); of several, the sha256 of their `sha256sum` lines sorted by name. A folder
    stands for its Hugging Face weight files (:func:`hf_weight_files`). None: no files."""
    if isinstance(weights, Path):
        files = [weights] if weights.is_file() else hf_weight_files(weights)
    else:
        files = list(weights)
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


__all__ = ["HF_WEIGHTS", "HF_WEIGHT_FILES", "hf_weight_files", "sha256_file", "weights_sha256"]
