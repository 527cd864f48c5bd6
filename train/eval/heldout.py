"""Held-out loss of a prepared data folder, in nats per token and in bits per byte.

Bits per byte (nats/token × tokens ÷ bytes ÷ ln 2) do not depend on the tokenizer, so models
with different tokenizers compare on the same text. Every token of the split is predicted
once, in consecutive ``seq_len`` windows as in the trainer's val loss; bytes come from
``meta.json``. Windows, EOS and byte counts: docs/DESIGN-NOTES.md, eval/heldout.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT
from cgpt.train.data.shards import TokenData, open_token_data
from cgpt.train.data.tokenizer import load_tokenizer

LN2 = math.log(2.0)
BYTES_KEY = "text_bytes"  # meta.json: splits.<split>.text_bytes, UTF-8 bytes of the text
_DECODE_TOKENS = 1 << 20  # tokens decoded per chunk when recounting bytes


def _open(data):
    return data if isinstance(data, TokenData) else open_token_data(data, verify="size")


def recorded_bytes(data, split: str) -> int | None:
    """``splits.<split>.text_bytes`` of meta.json, if prepare recorded it."""
    v = (_open(data).meta.get("splits", {}).get(split) or {}).get(BYTES_KEY)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return None
    return v


def count_text_bytes(tokens, tokenizer, eos_id: int) -> int:
    """UTF-8 bytes of the text behind ``tokens``: each document (the tokens between EOS
    tokens) decoded on its own, EOS tokens excluded."""
    arr = np.asarray(tokens)
    ends = np.flatnonzero(arr == eos_id)
    total, start = 0, 0
    for end in [*ends.tolist(), len(arr)]:
        piece = arr[start:end]
        for i in range(0, len(piece), _DECODE_TOKENS):
            # a cut inside a multi-byte character is rare (1M-token chunks) and costs at most
            # a few bytes of U+FFFD; documents this long are decoded in chunks for memory
            total += len(
                tokenizer.decode(piece[i : i + _DECODE_TOKENS].tolist()).encode(
                    "utf-8", "surrogatepass"
                )
            )
        start = end + 1
    return total


def split_bytes(
    data, split: str, tokenizer_dir: str | os.PathLike | None = None
) -> tuple[int, str]:
    """(UTF-8 bytes of the split's text, where the number came from)."""
    data = _open(data)
    n = recorded_bytes(data, split)
    if n is not None:
        return n, "meta.json"
    tok_dir = tokenizer_dir or data.tokenizer_dir
    if tok_dir and Path(tok_dir).is_dir():
        tok = load_tokenizer(tok_dir)
        if data.fingerprint and tok.fingerprint != data.fingerprint:
            raise CgptError(
                f"tokenizer {tok_dir} is not the one that produced {data.dir} "
                f"(fingerprint {tok.fingerprint[:12]} vs {data.fingerprint[:12]}); "
                "its byte count cannot be recomputed with it"
            )
        return (
            count_text_bytes(data.split(split), tok, data.eos_id),
            f"recomputed by decoding the tokens with {tok_dir}",
        )
    raise CgptError(
        f"{data.dir}/meta.json does not record the UTF-8 bytes of the {split} "
        f"split (splits.{split}.{BYTES_KEY}), and the tokenizer that made it is not "
        "known here, so bits per byte cannot be computed; re-run `cgpt prepare` "
        "(it records the count), or pass --tokenizer DIR to recount by decoding"
    )


def _vocab(model) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "vocab_size", 0) or 0)


def _positions(model) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "n_positions", 0) or getattr(cfg, "max_position_embeddings", 0) or 0)


@torch.no_grad()
def _batch_nats(model, x: torch.Tensor, y: torch.Tensor) -> float:
    valid = int((y >= 0).sum())
    if isinstance(model, GPT):  # the fused head + cross-entropy: no (B, T, V) logits
        return float(model(x, y).double()) * valid
    logits = model(x).logits  # a transformers model
    return float(
        F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        ).double()
    )


@torch.no_grad()
def heldout_loss(
    model,
    data,
    split: str = "val",
    seq_len: int | None = None,
    batch: int = 4,
    device: str | torch.device = "cpu",
    tokenizer_dir: str | os.PathLike | None = None,
    text_bytes: int | tuple[int, str] | None = None,
) -> dict:
    """Cross-entropy of ``model`` over a prepared folder's split (see the module docstring).

    ``model``: a cgpt GPT or a transformers causal LM; ``data``: a data folder or an open
    :class:`cgpt.train.data.shards.TokenData`; ``seq_len``: window length (default the
    model's n_positions); ``text_bytes``: the split's byte count when already known (else
    :func:`split_bytes`, which may decode the split). Returns ``{nats_per_token,
    bits_per_byte, tokens, bytes, bytes_from, split, seq_len}``. The model is left in eval
    mode on ``device``.
    """
    data = _open(data)
    toks = data.split(split)
    n = len(toks)
    if n == 0:
        raise CgptError(f"the {split} split of {data.dir} holds no tokens")
    vocab = _vocab(model)
    if vocab and data.vocab_size > vocab:
        raise CgptError(
            f"the data in {data.dir} was tokenized with a vocab of "
            f"{data.vocab_size} but the model's vocab_size is {vocab}: this data "
            "was not made with the model's tokenizer"
        )
    if text_bytes is None:
        nbytes, bytes_from = split_bytes(data, split, tokenizer_dir)
    elif isinstance(text_bytes, tuple):
        nbytes, bytes_from = text_bytes
    else:
        nbytes, bytes_from = int(text_bytes), "given"
    if nbytes <= 0:
        raise CgptError(
            f"the {split} split of {data.dir} has no text bytes; bits per byte are undefined"
        )
    limit = _positions(model)
    seq_len = int(seq_len or limit or 1024)
    if seq_len <= 0 or (limit and seq_len > limit):
        raise CgptError(f"seq_len {seq_len} must be in [1, {limit}] (the model's context)")
    if batch <= 0:
        raise CgptError(f"batch must be positive, got {batch}")
    model.eval()
    dev = torch.device(device)
    eos = data.eos_id
    total = 0.0
    starts = list(range(0, n, seq_len))
    for b in range(0, len(starts), batch):
        xs, ys = [], []
        for s in starts[b : b + batch]:
            e = min(s + seq_len, n)
            y = np.asarray(toks[s:e], dtype=np.int64)
            prev = np.array([eos], np.int64) if s == 0 else np.asarray(toks[s - 1 : s], np.int64)
            x = np.concatenate([prev, y[:-1]])
            pad = seq_len - len(y)
            xs.append(np.pad(x, (0, pad), constant_values=eos))
            ys.append(np.pad(y, (0, pad), constant_values=-1))
        x_t = torch.from_numpy(np.stack(xs)).to(dev)
        y_t = torch.from_numpy(np.stack(ys)).to(dev)
        total += _batch_nats(model, x_t, y_t)
    nats = total / n
    return {
        "nats_per_token": nats,
        "bits_per_byte": nats * n / nbytes / LN2,
        "tokens": n,
        "bytes": nbytes,
        "bytes_from": bytes_from,
        "split": split,
        "seq_len": seq_len,
    }


__all__ = ["BYTES_KEY", "count_text_bytes", "heldout_loss", "recorded_bytes", "split_bytes"]
