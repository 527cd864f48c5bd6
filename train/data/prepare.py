"""``cgpt prepare``: documents -> tokens (+EOS each) -> packed train/val shards + meta.json.

The main process streams documents from the source in fixed-size chunks and hands each chunk
to a pool of worker processes that tokenize it; results come back in order, so the output
does not depend on the number of workers. At most ``2 × workers`` chunks are in flight, and
tokens go straight to the shard files, so memory stays flat however large the corpus.

The train/val split is by document and deterministic: document ``i`` (0-based, in source
order) goes to val when ``floor((i+1)·f + c) > floor(i·f + c)`` with ``c = 1 - f``, i.e.
document 0 and then one in every ``1/f``: exactly the requested fraction, spread evenly over
the corpus, and never an empty val split when ``f > 0``.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from cgpt.model.errors import CgptError

from cgpt.train.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter, dtype_for_vocab
from cgpt.train.data.sources import open_source
from cgpt.train.data.tokenizer import load_tokenizer

CHUNK_CHARS = 1 << 20  # text per worker task: big enough to hide the IPC, small for memory

_worker_tok = None  # the tokenizer inside a worker process


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
    _worker_tok = load_tokenizer(tokenizer_dir)
    _worker_tok.num_threads = 1


def _encode_chunk(docs: list[str], tok=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokens of every document followed by EOS, concatenated; per-document lengths (with
    the EOS); UTF-8 bytes of the input."""
    tok = tok or _worker_tok
    dtype = dtype_for_vocab(tok.vocab_size)
    encoded = tok.encode_batch(docs)
    lengths = np.fromiter((len(e) + 1 for e in encoded), np.int64, len(encoded))
    flat = np.empty(int(lengths.sum()), dtype)
    ends = np.cumsum(lengths)
    for e, end in zip(encoded, ends):
        flat[end - len(e) - 1: end - 1] = e
    flat[ends - 1] = tok.eos_id
    nbytes = sum(len(d.encode("utf-8", "surrogatepass")) for d in docs)
    return flat, lengths, nbytes


def val_mask(first_index: int, count: int, val_fraction: float) -> np.ndarray:
    """Which of documents first_index..first_index+count-1 go to the val split."""
    if val_fraction <= 0:
        return np.zeros(count, bool)
    i = np.arange(first_index, first_index + count, dtype=np.float64)
    c = 1.0 - val_fraction
    return np.floor((i + 1) * val_fraction + c) > np.floor(i * val_fraction + c)


def _chunked(docs: Iterator[str], chunk_chars: int) -> Iterator[list[str]]:
    buf, size = [], 0
    for d in docs:
        buf.append(d)
        size += len(d)
        if size >= chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def _encoded_chunks(chunks: Iterator[list[str]], tokenizer, num_proc: int):
    """Encoded chunks in input order; at most 2*num_proc in flight (bounded memory)."""
    if num_proc <= 1:
        tokenizer.num_threads = 1  # --num-proc 1 means one core, also inside sentencepiece
        for c in chunks:
            yield _encode_chunk(c, tokenizer)
        return
    # fork: workers start instantly and need no importable __main__ (scripts, notebooks)
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.dir,)) as pool:
        pending = collections.deque()
        for c in chunks:
            pending.append(pool.apply_async(_encode_chunk, (c,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled, self.t0, self.last = enabled, time.perf_counter(), 0.0

    def update(self, docs: int, nbytes: int, tokens: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 2.0):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        print(f"\rprepare: {docs:,} docs, {nbytes / 1e6:,.1f} MB, {tokens:,} tokens, "
              f"{nbytes / 1e6 / dt:.2f} MB/s, {tokens / dt:,.0f} tokens/s",
              end="\n" if final else "", file=sys.stderr, flush=True)


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def prepare(source: str, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
            val_fraction: float = 0.005, text_field: str = "text", num_proc: int | None = None,
            split: str = "train", max_docs: int | None = None, force: bool = False,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: bool = False) -> dict:
    """Tokenize ``source`` with the tokenizer in ``tokenizer_dir`` into ``out_dir``; return
    the meta dict (also written as meta.json). Raises CgptError on bad input, leaving no
    partial output behind."""
    if not 0 <= val_fraction < 1:
        raise CgptError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    num_proc = num_proc or available_cores()
    if num_proc < 1:
        raise CgptError(f"--num-proc must be at least 1, got {num_proc}")
    tok = load_tokenizer(tokenizer_dir)
    src = open_source(source, text_field=text_field, split=split, max_docs=max_docs)
    bar = _Progress(progress)
    t0 = time.perf_counter()
    nbytes = docs = 0
    with ShardWriter(out_dir, tok.vocab_size, tok.eos_id, overwrite=force,
                     shard_tokens=shard_tokens) as writer:
        for flat, lengths, b in _encoded_chunks(_chunked(iter(src), CHUNK_CHARS), tok, num_proc):
            mask = val_mask(docs, len(lengths), val_fraction)
            token_mask = np.repeat(mask, lengths)
            writer.write("train", flat[~token_mask], int((~mask).sum()))
            writer.write("val", flat[token_mask], int(mask.sum()))
            docs, nbytes = docs + len(lengths), nbytes + b
            bar.update(docs, nbytes, writer.splits["train"].tokens + writer.splits["val"].tokens)
        if docs == 0:
            raise CgptError(f"input {source!r} holds no documents "
                            f"({src.stats.empty_documents} empty ones skipped); nothing to prepare")
        wall = time.perf_counter() - t0
        tokens = writer.splits["train"].tokens + writer.splits["val"].tokens
        bar.update(docs, nbytes, tokens, final=True)
        meta = writer.commit(
            tokenizer_fingerprint=tok.fingerprint, tokenizer_dir=str(Path(tok.dir).resolve()),
            source=src.description, replacement_chars=src.stats.replacement_chars,
            tokenizer_kind=tok.kind, text_field=text_field, val_fraction=val_fraction,
            split_rule="document i is val iff floor((i+1)f + 1-f) > floor(i f + 1-f)",
            documents=docs, empty_documents=src.stats.empty_documents, input_bytes=nbytes)
    meta["_stats"] = {"wall_s": wall, "num_proc": num_proc,
                      "mb_per_s": nbytes / 1e6 / max(wall, 1e-9),
                      "tokens_per_s": tokens / max(wall, 1e-9)}
    return meta
