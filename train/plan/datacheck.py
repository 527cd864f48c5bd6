"""What a plan's data says, read from the meta.json of the folders ``--data`` names (one
folder or a mixture): the vocabulary and tokenizer the model must use, and the token counts
a plan is checked against before any YAML is written (a val split shorter than one window, a
train split shorter than one step). No torch: memory maps of the shards, nothing more.

Paths: ``cgpt plan --write`` writes every path absolute (resolved against the working
directory of `cgpt plan`), so a run config means the same data from any directory.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cgpt.model.errors import CgptError
from cgpt.model.sizes import VOCAB_PAD_MULTIPLE, padded_vocab, vocab_fits
from cgpt.train.checks import FieldError

if TYPE_CHECKING:
    from cgpt.train.data.shards import TokenData


def absolute(path: str) -> str:
    """``path`` as written into a run config: user-expanded, absolute."""
    return str(Path(path).expanduser().resolve())


def absolute_spec(data: str | dict) -> dict:
    """A data folder, or the data section's fields (``{"path": DIR}`` or ``{"sources":
    [{name, path, weight}, ...]}``) -> those fields with absolute folders."""
    spec: dict = {"path": data} if isinstance(data, str) else data
    if "path" in spec:
        return {"path": absolute(spec["path"])}
    return {"sources": [{**s, "path": absolute(s["path"])} for s in spec["sources"]]}


@dataclass(frozen=True)
class DataInfo:
    """The folders of one ``--data`` (a single folder is a one-source mixture)."""

    spec: dict  # the run config's data fields, paths absolute
    folders: tuple[TokenData, ...]

    @property
    def first(self) -> TokenData:
        return self.folders[0]

    @property
    def vocab_size(self) -> int:
        return self.first.vocab_size

    @property
    def train_tokens(self) -> int:
        return sum(len(d.train) for d in self.folders)


def read_data(data: str | dict) -> DataInfo:
    """Open every folder of ``data`` (a folder or the data section's fields: meta.json and
    shard sizes; CgptError when a folder is missing or not prepared, or when the sources
    differ in tokenizer)."""
    # numpy (the shards' memory maps): only when --data is given, so `cgpt plan SIZE` stays
    # a quick command
    from cgpt.train.data.shards import open_token_data

    spec = absolute_spec(data)
    paths = [spec["path"]] if "path" in spec else [s["path"] for s in spec["sources"]]
    folders = tuple(open_token_data(p, verify="size") for p in paths)
    first = folders[0]
    for d in folders[1:]:
        if (d.vocab_size, d.fingerprint) != (first.vocab_size, first.fingerprint):
            raise FieldError(
                "{f.data}: {a!r} and {b!r} were prepared with different "
                "tokenizers (vocab {va} vs {vb}); prepare every "
                "source with the same --tokenizer",  # cgpt prepare's flag
                a=str(first.dir),
                b=str(d.dir),
                va=first.vocab_size,
                vb=d.vocab_size,
            )
    return DataInfo(spec, folders)


def vocab_for(requested: int | None, info: DataInfo | None, default: int) -> int:
    """The planned model's vocab: the data's (``requested`` must agree with it, padding to a
    multiple of VOCAB_PAD_MULTIPLE allowed), else ``requested``, else ``default``."""
    if info is None:
        return default if requested is None else requested
    if requested is None:
        return info.vocab_size
    if not vocab_fits(requested, info.vocab_size):
        raise FieldError(
            "{f.vocab_size} {requested} contradicts the data: {folder!r} was "
            "tokenized with vocab {vocab} (use {vocab}, or "
            "{padded} padded to a multiple of {multiple}; "
            "or drop {f.vocab_size})",
            requested=requested,
            folder=str(info.first.dir),
            vocab=info.vocab_size,
            padded=padded_vocab(info.vocab_size),
            multiple=VOCAB_PAD_MULTIPLE,
        )
    return requested


def check_fits(info: DataInfo, seq_len: int, batch_tokens: int) -> None:
    """Refuse, before anything is written, data the planned run cannot train on: a val split
    shorter than one window of seq_len+1 tokens, or train splits shorter than one step."""
    for d in info.folders:
        if len(d.val) < seq_len + 1:
            raise FieldError(
                "the val split of {folder!r} holds {val:,} tokens, fewer than one "
                "window of seq_len+1 = {window:,}; re-run cgpt prepare with a larger "
                "--val-fraction (or more text), or plan a shorter {f.seq_len}",
                folder=str(d.dir),
                val=len(d.val),
                window=seq_len + 1,
            )
        if len(d.train) < seq_len + 1:
            raise CgptError(
                f"the train split of {str(d.dir)!r} holds {len(d.train):,} tokens, fewer "
                f"than one window of seq_len+1 = {seq_len + 1:,}; prepare more text"
            )
    if info.train_tokens < batch_tokens:
        raise FieldError(
            "{f.data} holds {train:,} train tokens, fewer than one step of "
            "{step:,} (global batch × seq_len); prepare more text, or plan a "
            "smaller model ({f.batch_seqs}, {f.seq_len})",
            train=info.train_tokens,
            step=batch_tokens,
        )


def reprepare_command(data: TokenData, tokenizer: str | Path) -> str:
    """The `cgpt prepare` that re-tokenizes ``data``'s text with ``tokenizer`` into a new
    folder beside it (the input from meta.json's ``source``; ``SRC`` when unknown)."""
    meta = data.meta
    out = data.dir.parent / f"{data.dir.name}-{Path(str(tokenizer)).name or 'tok'}"
    description = str(meta.get("source", ""))
    parts = ["cgpt prepare", "--input", _input_of(description)]
    cap = re.search(r", first (\d+) documents$", description)
    if cap and not description.startswith("stdlib:"):
        parts += ["--max-docs", cap.group(1)]
    parts += ["--tokenizer", str(tokenizer), "--out", str(out)]
    if meta.get("val_fraction") is not None:
        parts += ["--val-fraction", f"{meta['val_fraction']:g}"]
    if meta.get("text_field") not in (None, "text"):
        parts += ["--text-field", str(meta["text_field"])]
    return " ".join(_quote(p) for p in parts)


def wrong_tokenizer(spec: str, src, data: TokenData) -> str:
    """The one line for data tokenized with another tokenizer than the source's
    (``src``: a cgpt.train.source.model_source.ModelSource): the `cgpt prepare` that
    re-tokenizes it."""
    what = (
        f"--init-from {spec} has vocab {src.shape.vocab_size} but {str(data.dir)!r} was "
        f"tokenized with vocab {data.vocab_size}: the token ids would mean other words to "
        "the loaded model"
    )
    if src.tokenizer is None:
        return f"{what}; re-run cgpt prepare with the tokenizer {spec} was trained with"
    fix = reprepare_command(data, src.tokenizer)
    return f"{what}; re-tokenize it with the source's tokenizer: {fix}"


def _input_of(description: str) -> str:
    """meta.json's ``source`` description (cgpt.train.data.sources) -> an --input value."""
    cap = re.search(r", first (\d+) documents$", description)
    desc = description[: cap.start()] if cap else description
    if desc.startswith("stdlib:"):
        return "stdlib" + (f":max_docs={cap.group(1)}" if cap else "")
    m = re.fullmatch(r"local: (?:\d+ files from )?(.+)", desc)
    if m:
        return m.group(1)
    m = re.match(r"(hf:\S+)", desc)
    return m.group(1) if m else "SRC"


def _quote(text: str) -> str:
    return text if text.startswith("cgpt ") else shlex.quote(text)
