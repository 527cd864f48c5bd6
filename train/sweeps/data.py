"""A sweep's data folder: found, or prepared on first use (tokenizer + shards), and its
identity (so that points trained on other data are never compared)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.data.prepare import prepare
from cgpt.train.data.shards import open_token_data
from cgpt.train.data.tokenizer import load_tokenizer, train_tokenizer
from cgpt.train.sweeps.config import SweepConfig


def tokenizer_dir(sweep: SweepConfig) -> str | None:
    if sweep.data.tokenizer:
        return sweep.data.tokenizer
    return sweep.data.path.rstrip("/") + "-tokenizer" if sweep.data.prepare else None


def _missing_data(sweep: SweepConfig) -> CgptError:
    return CgptError(
        f"data folder {sweep.data.path!r} not found; create it with `cgpt prepare` "
        "or add data.prepare (source, vocab_size) to the sweep file"
    )


def ensure_data(sweep: SweepConfig, log=print):
    """Open the sweep's data folder, preparing it first when missing and data.prepare says how."""
    path = Path(sweep.data.path)
    if not (path / "meta.json").is_file():
        spec = sweep.data.prepare
        if spec is None:
            raise _missing_data(sweep)
        tok = Path(tokenizer_dir(sweep) or "")  # set: data.prepare is given
        if not tok.is_dir():
            log(
                f"training a {spec.vocab_size}-token sentencepiece tokenizer on "
                f"{spec.source!r} -> {tok}"
            )
            train_tokenizer(
                spec.source, spec.vocab_size, tok, seed=spec.seed, max_docs=spec.max_docs
            )
        log(f"preparing {spec.source!r} -> {path}")
        prepare(spec.source, tok, path, val_fraction=spec.val_fraction, max_docs=spec.max_docs)
    return open_token_data(path, verify="size")


def dry_run_vocab(sweep: SweepConfig, log=print) -> int:
    """What :func:`ensure_data` would do, said and not done (a dry run writes nothing); the
    vocab size the points will have."""
    path = Path(sweep.data.path)
    if (path / "meta.json").is_file():
        data = open_token_data(path, verify="size")
        log(
            f"data: {path} ({data.meta['splits']['train']['tokens']:,} train tokens, "
            f"vocab {data.vocab_size})"
        )
        return data.vocab_size
    spec = sweep.data.prepare
    if spec is None:
        raise _missing_data(sweep)
    tok = Path(tokenizer_dir(sweep) or "")  # set: data.prepare is given
    if tok.is_dir():
        vocab = load_tokenizer(tok).vocab_size
        log(f"would use the existing tokenizer {tok} ({vocab} tokens)")
    else:
        vocab = spec.vocab_size
        log(
            f"would train a {spec.vocab_size}-token sentencepiece tokenizer on {spec.source!r} "
            f"-> {tok}"
        )
    log(
        f"would prepare the data: {spec.source!r} -> {path} (val fraction "
        f"{spec.val_fraction}{f', first {spec.max_docs} documents' if spec.max_docs else ''})"
    )
    return vocab


def data_id(data) -> str:
    """Identity of a data folder's contents and tokenizer (shard checksums + fingerprint)."""
    meta = data.meta
    parts = [str(meta.get("vocab_size")), str(data.fingerprint)]
    for split in sorted(meta.get("splits", {})):
        parts += [f["sha256"] for f in meta["splits"][split].get("files", [])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
