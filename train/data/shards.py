"""Packed token shards on disk: ``train*.bin`` / ``val*.bin`` plus ``meta.json``.

A data folder holds every document's tokens, EOS-terminated and concatenated, as one flat
little-endian array per split (uint16 when the vocab fits, else uint32), optionally cut into
several shard files. ``meta.json`` records the dtype, vocab, EOS id, token and document
counts, the tokenizer fingerprint, the source, replacement-character counts, and the size
and sha256 of every file, so a truncated or edited shard is caught before training starts.

Writers build the folder under a temporary name next to the target and rename it at the end,
so an interrupted run never leaves a half-written data folder that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cgpt.model.errors import CgptError

FORMAT = "cgpt-tokens"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 30  # 2 GiB of uint16 per file: big corpora become several shards


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so vocabs up to 65536 entries; anything bigger is uint32."""
    if vocab_size <= 0:
        raise CgptError(f"vocab size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= (1 << 16) else np.dtype(np.uint32)


# ---------------------------------------------------------------------------- writing
class _SplitWriter:
    """Appends token arrays to ``{split}.bin`` (or ``{split}-NNNNN.bin`` shards), hashing
    as it writes so finishing needs no second pass over the data."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shard_tokens = shard_tokens
        self.files: list[dict[str, Any]] = []
        self.tokens = 0
        self.documents = 0
        self._fh = None
        self._hash = None
        self._cur_tokens = 0

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self._fh = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._cur_tokens = 0
        self.files.append({"name": name})

    def _close_current(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        entry = self.files[-1]
        entry.update(tokens=self._cur_tokens, bytes=self._cur_tokens * self.dtype.itemsize,
                     sha256=self._hash.hexdigest())
        self._fh = None

    def write(self, tokens: np.ndarray, documents: int) -> None:
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.documents += documents
        while arr.size:
            if self._fh is None or self._cur_tokens >= self.shard_tokens:
                self._open_next()
            take = arr[: self.shard_tokens - self._cur_tokens]
            buf = take.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            self._fh.write(buf)
            self._hash.update(buf)
            self._cur_tokens += take.size
            self.tokens += take.size
            arr = arr[take.size:]

    def finish(self) -> dict[str, Any]:
        if self._fh is None and not self.files:
            self._open_next()  # an empty split still gets its (empty) file
        self._close_current()
        if len(self.files) == 1:  # the common case keeps the plain name train.bin / val.bin
            only = self.files[0]
            (self.folder / only["name"]).rename(self.folder / f"{self.split}.bin")
            only["name"] = f"{self.split}.bin"
        return {"tokens": self.tokens, "documents": self.documents, "files": self.files}


class ShardWriter:
    """Builds a data folder under a temporary name; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block with an exception deletes the temporary
    folder, so nothing half-written is left behind.
    """

    def __init__(self, out_dir: str | os.PathLike, vocab_size: int, eos_id: int,
                 overwrite: bool = False, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        self.out_dir = Path(out_dir)
        _check_target(self.out_dir, overwrite)
        self.vocab_size, self.eos_id = int(vocab_size), int(eos_id)
        if not 0 <= self.eos_id < self.vocab_size:
            raise CgptError(f"eos id {eos_id} is outside the vocab (size {vocab_size})")
        self.dtype = dtype_for_vocab(self.vocab_size)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp",
                                         dir=self.out_dir.parent))
        self.tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        self.splits = {s: _SplitWriter(self.tmp, s, self.dtype, shard_tokens) for s in SPLITS}

    def write(self, split: str, tokens: np.ndarray, documents: int) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise CgptError(f"token ids must lie in [0, {self.vocab_size}); got "
                            f"[{tokens.min()}, {tokens.max()}]")
        self.splits[split].write(tokens, documents)

    def commit(self, **info: Any) -> dict[str, Any]:
        """Close the files, write meta.json, rename the folder to ``out_dir``; return meta."""
        meta = {
            "format": FORMAT, "version": VERSION, "dtype": self.dtype.name,
            "vocab_size": self.vocab_size, "eos_id": self.eos_id,
            "splits": {s: w.finish() for s, w in self.splits.items()},
            "tokenizer": {"fingerprint": info.pop("tokenizer_fingerprint", None),
                          "dir": info.pop("tokenizer_dir", None)},
            "source": info.pop("source", "synthetic"),
            "replacement_chars": int(info.pop("replacement_chars", 0)),
        }
        meta.update(info)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        old = None
        if self.out_dir.exists():  # _check_target allowed it: an empty or a data folder
            # move the old folder aside first so the swap itself is one rename
            old = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".old",
                                        dir=self.out_dir.parent))
            os.replace(self.out_dir, old / "data")
        os.replace(self.tmp, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return meta

    def abort(self) -> None:
        for w in self.splits.values():
            if w._fh is not None:
                w._fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CgptError(f"output {str(out_dir)!r} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / "meta.json").is_file():
        raise CgptError(f"output folder {str(out_dir)!r} is not empty and is not a cgpt data "
                        "folder; choose a new folder")
    if not overwrite:
        raise CgptError(f"output folder {str(out_dir)!r} already holds prepared data; "
                        "pass --force to replace it")


def write_token_data(out_dir: str | os.PathLike, train_tokens: np.ndarray,
                     val_tokens: np.ndarray, vocab_size: int, eos_id: int,
                     tokenizer_fingerprint: str | None = None, source: str = "synthetic",
                     tokenizer_dir: str | None = None, overwrite: bool = True) -> dict:
    """Write already-tokenized splits (tests, synthetic data) as a data folder; return meta.

    Documents are counted as EOS tokens. An existing data folder is replaced (atomically)
    unless ``overwrite=False``.
    """
    eos = int(eos_id)
    with ShardWriter(out_dir, vocab_size, eos, overwrite=overwrite) as w:
        for split, toks in (("train", train_tokens), ("val", val_tokens)):
            toks = np.asarray(toks).reshape(-1)
            w.write(split, toks, documents=int(np.count_nonzero(toks == eos)))
        return w.commit(tokenizer_fingerprint=tokenizer_fingerprint, source=source,
                        tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None)


# ---------------------------------------------------------------------------- reading
class ConcatTokens:
    """A read-only 1-D view over several shard memmaps: ``len`` and contiguous slices."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            p = int(np.searchsorted(self.starts, i, side="right") - 1)
            return self.parts[p][i - self.starts[p]]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ConcatTokens supports integers and contiguous slices")
        start, stop, _ = key.indices(len(self))
        out = []
        while start < stop:
            p = int(np.searchsorted(self.starts, start, side="right") - 1)
            end = min(stop, int(self.starts[p + 1]))
            out.append(self.parts[p][start - self.starts[p]: end - self.starts[p]])
            start = end
        return np.concatenate(out) if out else np.zeros(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr


@dataclass
class TokenData:
    dir: Path
    meta: dict
    train: Any  # np.memmap (one shard) or ConcatTokens (several)
    val: Any

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def fingerprint(self) -> str | None:
        return (self.meta.get("tokenizer") or {}).get("fingerprint")

    @property
    def tokenizer_dir(self) -> str | None:
        return (self.meta.get("tokenizer") or {}).get("dir")

    def split(self, name: str):
        if name not in SPLITS:
            raise CgptError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return h.hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            h.update(m)
    return h.hexdigest()


def _read_meta(folder: Path) -> dict:
    if not folder.is_dir():
        raise CgptError(f"data folder {str(folder)!r} not found; create it with `cgpt prepare`")
    path = folder / "meta.json"
    if not path.is_file():
        raise CgptError(f"{str(folder)!r} has no meta.json: not a prepared data folder "
                        "(or a prepare run did not finish); re-run `cgpt prepare`")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("format")
        if int(meta.get("version", 0)) > VERSION:
            raise CgptError(f"{path} has format version {meta['version']}, newer than this "
                            f"cgpt reads ({VERSION}); upgrade cgpt")
        np.dtype(meta["dtype"]), int(meta["vocab_size"]), int(meta["eos_id"])
        for s in SPLITS:
            for f in meta["splits"][s]["files"]:
                f["name"], int(f["bytes"]), f["sha256"]
    except CgptError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CgptError(f"{path} is not a valid cgpt meta.json ({e.__class__.__name__}: {e}); "
                        "re-run `cgpt prepare`") from None
    return meta


def _open_file(folder: Path, entry: dict, dtype: np.dtype, verify) -> np.ndarray:
    path = folder / entry["name"]
    if not path.is_file():
        raise CgptError(f"shard {entry['name']} is missing from {str(folder)!r}; "
                        "re-run cgpt prepare")
    size = path.stat().st_size
    if size != int(entry["bytes"]):
        raise CgptError(f"shard {entry['name']} has {size} bytes but meta.json records "
                        f"{entry['bytes']}: it was truncated or edited after prepare; "
                        "re-run cgpt prepare")
    if verify is True and _sha256_file(path) != entry["sha256"]:
        raise CgptError(f"shard {entry['name']} fails its checksum: it was truncated or "
                        "edited after prepare; re-run cgpt prepare")
    if size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r")


def open_token_data(data_dir: str | os.PathLike, verify: bool | str = True) -> TokenData:
    """Open a data folder as memory maps.

    ``verify=True`` checks every file's size and sha256 (seconds per GB), ``"size"`` only the
    sizes (big corpora), ``False`` skips both. Problems raise :class:`CgptError`.
    """
    if verify not in (True, False, "size"):
        raise ValueError(f"verify must be True, False or 'size', got {verify!r}")
    folder = Path(data_dir)
    meta = _read_meta(folder)
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for s in SPLITS:
        parts = [_open_file(folder, e, dtype, verify) for e in meta["splits"][s]["files"]]
        arrays[s] = parts[0] if len(parts) == 1 else ConcatTokens(parts)
    return TokenData(dir=folder, meta=meta, train=arrays["train"], val=arrays["val"])


def check_vocab(data: TokenData, model_vocab_size: int, tokenizer=None) -> None:
    """Raise CgptError unless the data, the model and (optionally) the tokenizer agree.

    The model may have a larger (padded) vocab than the data, never a smaller one; a given
    tokenizer must be the one that produced the shards (same fingerprint and vocab).
    """
    if data.vocab_size > model_vocab_size:
        raise CgptError(f"the data in {str(data.dir)!r} was tokenized with a vocab of "
                        f"{data.vocab_size} but the model's vocab_size is {model_vocab_size}; "
                        f"set model.vocab_size to at least {data.vocab_size}")
    if tokenizer is None:
        return
    if tokenizer.vocab_size != data.vocab_size:
        raise CgptError(f"tokenizer {getattr(tokenizer, 'dir', '')!s} has vocab "
                        f"{tokenizer.vocab_size} but the data in {str(data.dir)!r} was "
                        f"tokenized with vocab {data.vocab_size}; use the tokenizer recorded "
                        f"in meta.json ({data.tokenizer_dir}) or re-run cgpt prepare")
    fp = getattr(tokenizer, "fingerprint", None)
    if data.fingerprint and fp and fp != data.fingerprint:
        raise CgptError(f"tokenizer {getattr(tokenizer, 'dir', '')!s} is not the one that "
                        f"produced the data in {str(data.dir)!r} (fingerprint {fp[:12]} vs "
                        f"{data.fingerprint[:12]}); use {data.tokenizer_dir} or re-run "
                        "cgpt prepare")
