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
import contextlib
import io
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

import numpy as np

from cgpt.model.errors import CgptError
from cgpt.train.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter, dtype_for_vocab
from cgpt.train.data.sources import Source, open_source
from cgpt.train.data.tokenizer import load_tokenizer

CHUNK_CHARS = 1 << 20  # text per worker task: big enough to hide the IPC, small for memory

_worker_tok = None  # the tokenizer inside a worker process


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
    _worker_tok = load_tokenizer(tokenizer_dir)
    _worker_tok.num_threads = 1


def _encode_chunk(docs: list[str], tok=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of every document followed by EOS, concatenated; per-document lengths (with
    the EOS); per-document UTF-8 bytes of the text (for bits per byte)."""
    tok = tok or _worker_tok
    dtype = dtype_for_vocab(tok.vocab_size)
    encoded = tok.encode_batch(docs)
    lengths = np.fromiter((len(e) + 1 for e in encoded), np.int64, len(encoded))
    flat = np.empty(int(lengths.sum()), dtype)
    ends = np.cumsum(lengths)
    for e, end in zip(encoded, ends):
        flat[end - len(e) - 1 : end - 1] = e
    flat[ends - 1] = tok.eos_id
    nbytes = np.fromiter(
        (len(d.encode("utf-8", "surrogatepass")) for d in docs), np.int64, len(docs)
    )
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
        pending: collections.deque[AsyncResult[tuple[np.ndarray, np.ndarray, np.ndarray]]]
        pending = collections.deque()
        for c in chunks:
            pending.append(pool.apply_async(_encode_chunk, (c,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _LogLines(io.TextIOBase):
    """The file tqdm draws on in a log: each redraw (``\\r`` + status + padding) becomes
    one whole line, so a log file or a pipe gets readable lines instead of carriage
    returns (tqdm itself assumes a terminal)."""

    def __init__(self, file):
        self.file = file

    def write(self, s: str) -> int:
        line = s.replace("\r", "").rstrip()
        if line:
            self.file.write(line + "\n")
            self.file.flush()
        return len(s)

    def flush(self) -> None:
        self.file.flush()


class _Progress:
    """Progress of a prepare run on stderr, drawn by tqdm.

    On a terminal: a bar redrawn in place (at most once a second). Anywhere else (a log
    file, a pipe, a batch job): the same status as one whole line every ``LOG_INTERVAL_S``
    seconds (:class:`_LogLines`). The total is the input's bytes, rows or document cap
    (:meth:`Source.progress_total`), so both show a percentage and an ETA. Runs shorter
    than ``DELAY_S`` print nothing (the command's summary line says it all).
    """

    DELAY_S = 2.0
    LOG_INTERVAL_S = 30.0
    LOG_FORMAT = (  # {sep}: a space before "rows"/"docs", none before "B" (7.50MB)
        "{{desc}}: {{percentage:3.0f}}% {{n_fmt}}/{{total_fmt}}{sep}{{unit}} "
        "[{{elapsed}}<{{remaining}}, {{rate_fmt}}{{postfix}}]"
    )

    def __init__(
        self, enabled: bool, total: tuple[int, str] | None, file=None, desc: str = "prepare"
    ):
        self.total: int | None = total[0] if total and total[0] > 0 else None
        self.unit = total[1].strip() if self.total and total else "B"
        self.bar: Any = None
        if not enabled:
            return
        from tqdm import tqdm

        file = file or sys.stderr
        tty = _isatty(file)
        self.bar = tqdm(
            total=self.total,
            desc=desc,
            unit=self.unit,
            unit_scale=self.unit == "B",
            unit_divisor=1000,
            file=file if tty else _LogLines(file),
            mininterval=1.0 if tty else self.LOG_INTERVAL_S,
            miniters=1,  # pace by time only
            delay=self.DELAY_S,
            dynamic_ncols=tty,
            bar_format=None
            if tty or not self.total
            else self.LOG_FORMAT.format(sep="" if self.unit == "B" else " "),
        )

    def update(self, docs: int, rows: int, nbytes: int, tokens: int, final: bool = False):
        """Record documents/rows/bytes read so far and tokens written; ``final`` closes."""
        if self.bar is None:
            return
        n = {"B": nbytes, "rows": rows}.get(self.unit, docs)
        other = f"{docs:,} docs" if self.unit == "B" else f"{nbytes / 1e6:,.1f} MB"
        self.bar.set_postfix_str(f"{other}, {tokens:,} tokens", refresh=False)
        if not final:
            self.bar.update(n - self.bar.n)
            return
        if self.total is not None:
            self.bar.total = n  # the total was an estimate (bytes on disk, rows, a cap): done
        self.bar.n = n  # close() draws the last line once, with the whole run's mean rate
        if time.time() - self.bar.start_t >= self.DELAY_S:
            self.bar.delay = 0  # also when no redraw fell due yet (a log's first interval)
        self.close()

    def close(self) -> None:
        """End the bar's line (also when prepare fails, so the error gets its own line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _closing(bar: _Progress):
    try:
        yield bar
    finally:
        bar.close()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_args(val_fraction: float, num_proc: int | None) -> int:
    """Refuse a val fraction or process count that cannot work; returns the process count."""
    if not 0 <= val_fraction < 1:
        raise CgptError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if val_fraction == 0:
        raise CgptError(
            "--val-fraction 0 would leave the val split empty, but `cgpt train` "
            "evaluates on it (it needs at least one window of seq_len+1 val tokens "
            "per rank); use a small fraction such as 0.005 (the default)"
        )
    num_proc = num_proc or available_cores()
    if num_proc < 1:
        raise CgptError(f"--num-proc must be at least 1, got {num_proc}")
    return num_proc


def _write_splits(
    src: Source, tok, num_proc: int, val_fraction: float, writer: ShardWriter, bar: _Progress
) -> tuple[int, int]:
    """Tokenize every document of ``src`` into the writer's train and val splits (document
    i goes to val by :func:`val_mask`); returns (documents, input bytes)."""
    nbytes = docs = 0
    for flat, lengths, b in _encoded_chunks(_chunked(iter(src), CHUNK_CHARS), tok, num_proc):
        mask = val_mask(docs, len(lengths), val_fraction)
        token_mask = np.repeat(mask, lengths)
        writer.write("train", flat[~token_mask], int((~mask).sum()), int(b[~mask].sum()))
        writer.write("val", flat[token_mask], int(mask.sum()), int(b[mask].sum()))
        docs, nbytes = docs + len(lengths), nbytes + int(b.sum())
        rows = docs + src.stats.empty_documents
        bar.update(docs, rows, nbytes, writer.splits["train"].tokens + writer.splits["val"].tokens)
    return docs, nbytes


def _check_splits(source: str, docs: int, writer: ShardWriter) -> int:
    """Refuse output whose train or val split is empty; returns the tokens written."""
    train_tokens = writer.splits["train"].tokens
    val_tokens = writer.splits["val"].tokens
    tokens = train_tokens + val_tokens
    if train_tokens == 0:
        raise CgptError(
            f"input {source!r} gave {docs:,} document{'s' if docs != 1 else ''} "
            f"({tokens:,} tokens, EOS included) and all of it went to the val split, so "
            "the train split would hold 0 tokens (the split sends document 0 to val); "
            "give at least 2 documents (more text, or a larger --max-docs)"
        )
    if val_tokens == 0:
        raise CgptError(
            f"input {source!r} gave {docs:,} documents ({tokens:,} tokens) but "
            "none went to the val split, which `cgpt train` evaluates on; "
            "raise --val-fraction"
        )
    return tokens


def prepare(
    source: str,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.005,
    text_field: str = "text",
    num_proc: int | None = None,
    split: str = "train",
    max_docs: int | None = None,
    force: bool = False,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = False,
    name: str | None = None,
) -> dict:
    """Tokenize ``source`` with the tokenizer in ``tokenizer_dir`` into ``out_dir``; return
    the meta dict (also written as meta.json). Raises CgptError on bad input (including a
    corpus that leaves the train or val split empty), leaving no partial output behind.

    ``out_dir`` is locked (``out_dir/.cgpt.lock``) for the whole write: a second prepare
    into the same folder is refused, naming the first one's pid and host. ``progress``
    prints progress on stderr (a bar on a terminal, plain lines in logs), labelled
    ``prepare NAME`` when ``name`` is given (one of several inputs)."""
    num_proc = _check_args(val_fraction, num_proc)
    tok = load_tokenizer(tokenizer_dir)
    src = open_source(source, text_field=text_field, split=split, max_docs=max_docs)
    desc = f"prepare {name}" if name else "prepare"
    bar = _Progress(progress, src.progress_total() if progress else None, desc=desc)
    t0 = time.perf_counter()
    # the writer holds out_dir's lock from here until the data is published (or dropped)
    with (
        ShardWriter(
            out_dir, tok.vocab_size, tok.eos_id, overwrite=force, shard_tokens=shard_tokens
        ) as writer,
        _closing(bar),
    ):
        docs, nbytes = _write_splits(src, tok, num_proc, val_fraction, writer, bar)
        if docs == 0:
            raise CgptError(
                f"input {source!r} holds no documents "
                f"({src.stats.empty_documents} empty ones skipped); nothing to "
                "prepare: point --input at text, or check --text-field"
            )
        wall = time.perf_counter() - t0
        tokens = _check_splits(source, docs, writer)
        bar.update(docs, docs + src.stats.empty_documents, nbytes, tokens, final=True)
        meta = writer.commit(
            tokenizer_fingerprint=tok.fingerprint,
            tokenizer_dir=str(Path(tok.dir).resolve()),
            source=src.description,
            replacement_chars=src.stats.replacement_chars,
            tokenizer_kind=tok.kind,
            text_field=text_field,
            val_fraction=val_fraction,
            split_rule="document i is val iff floor((i+1)f + 1-f) > floor(i f + 1-f)",
            documents=docs,
            empty_documents=src.stats.empty_documents,
            input_bytes=nbytes,
        )
    meta["_stats"] = {
        "wall_s": wall,
        "num_proc": num_proc,
        "mb_per_s": nbytes / 1e6 / max(wall, 1e-9),
        "tokens_per_s": tokens / max(wall, 1e-9),
    }
    return meta
