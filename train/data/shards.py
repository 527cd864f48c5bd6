"""Packed token shards on disk: ``train*.bin`` / ``val*.bin`` plus ``meta.json``.

One flat little-endian array of EOS-terminated documents per split, optionally in several
files; ``meta.json`` records dtype, vocab, counts, the tokenizer fingerprint and every file's
size and sha256, so a bad shard is caught before training. Writers hold the folder's lock and
publish by one atomic rename. Details: docs/DESIGN-NOTES.md, data/shards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cgpt.model.errors import CgptError
from cgpt.model.files import make_public, remove_stale
from cgpt.model.sizes import VOCAB_PAD_MULTIPLE, padded_vocab, vocab_fits
from cgpt.train.lock import LOCK_NAME, FolderLock

FORMAT = "cgpt-tokens"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 30  # 2 GiB of uint16 per file: big corpora become several shards
SUPPORTED_DTYPES = ("uint16", "uint32")  # what the writer produces (dtype_for_vocab)
_SCAN_TOKENS = 1 << 24  # tokens per chunk when scanning old shards for their largest id


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
        self.text_bytes: int | None = 0
        self.documents = 0
        self.max_token_id: int | None = None
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()  # replaced by each shard's _open_next
        self._cur_tokens = 0

    def _open_next(self) -> BinaryIO:
        self._close_current()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self._fh = fh = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._cur_tokens = 0
        self.files.append({"name": name})
        return fh

    def _close_current(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())  # on disk before the rename that publishes it
        self._fh.close()
        entry = self.files[-1]
        entry.update(
            tokens=self._cur_tokens,
            bytes=self._cur_tokens * self.dtype.itemsize,
            sha256=self._hash.hexdigest(),
        )
        self._fh = None

    def write(self, tokens: np.ndarray, documents: int, text_bytes: int | None = None) -> None:
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.documents += documents
        # UTF-8 bytes of the text behind the tokens (bits per byte); unknown once any write
        # comes without it (tokens written directly, e.g. synthetic data)
        if self.text_bytes is not None:
            self.text_bytes = None if text_bytes is None else self.text_bytes + int(text_bytes)
        if arr.size:
            top = int(arr.max())
            self.max_token_id = top if self.max_token_id is None else max(self.max_token_id, top)
        while arr.size:
            fh = self._fh
            if fh is None or self._cur_tokens >= self.shard_tokens:
                fh = self._open_next()
            take = arr[: self.shard_tokens - self._cur_tokens]
            buf = take.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            fh.write(buf)
            self._hash.update(buf)
            self._cur_tokens += take.size
            self.tokens += take.size
            arr = arr[take.size :]

    def finish(self) -> dict[str, Any]:
        if self._fh is None and not self.files:
            self._open_next()  # an empty split still gets its (empty) file
        self._close_current()
        if len(self.files) == 1:  # the common case keeps the plain name train.bin / val.bin
            only = self.files[0]
            (self.folder / only["name"]).rename(self.folder / f"{self.split}.bin")
            only["name"] = f"{self.split}.bin"
        return {
            "tokens": self.tokens,
            "documents": self.documents,
            "max_token_id": self.max_token_id,
            # not the shards' size on disk (files[i].bytes): the source text's UTF-8 bytes
            "text_bytes": self.text_bytes if self.tokens else 0,
            "files": self.files,
        }


class ShardWriter:
    """Builds a data folder under a temporary name; :meth:`commit` publishes it in place.

    From construction until :meth:`commit` or :meth:`abort` it holds the output folder's
    lock (``out_dir/.cgpt.lock``), so a second writer into the same folder is refused with
    the holder's pid and host. Use as a context manager: leaving the block with an exception
    deletes the temporary folder (and an output folder this writer created), so nothing
    half-written is left behind.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        vocab_size: int,
        eos_id: int,
        overwrite: bool = False,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
    ):
        self.out_dir = Path(out_dir)
        self.vocab_size, self.eos_id = int(vocab_size), int(eos_id)
        self.tmp: Path | None = None
        _check_target(self.out_dir, overwrite)  # before the lock: a refusal touches nothing
        if not 0 <= self.eos_id < self.vocab_size:
            raise CgptError(f"eos id {eos_id} is outside the vocab (size {vocab_size})")
        self.dtype = dtype_for_vocab(self.vocab_size)
        self.lock = FolderLock(self.out_dir, "prepare output").acquire()
        try:
            _check_target(self.out_dir, overwrite)  # again: another writer may have finished
            remove_stale(self.out_dir)  # a killed prepare's .NAME.*.tmp (we hold the lock)
            self.tmp = Path(
                tempfile.mkdtemp(
                    prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent
                )
            )
        except BaseException as e:
            self.lock.release(cleanup_if_unused=True)
            if isinstance(e, OSError):
                raise CgptError(
                    f"cannot write next to {str(self.out_dir)!r}: {e.strerror or e}"
                ) from None
            raise
        self.splits = {s: _SplitWriter(self.tmp, s, self.dtype, shard_tokens) for s in SPLITS}

    def write(
        self, split: str, tokens: np.ndarray, documents: int, text_bytes: int | None = None
    ) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise CgptError(
                f"token ids must lie in [0, {self.vocab_size}); got "
                f"[{tokens.min()}, {tokens.max()}]"
            )
        try:
            self.splits[split].write(tokens, documents, text_bytes)
        except OSError as e:  # a full disk, a quota: one line, and nothing is published
            raise self._write_error(e) from None

    def _write_error(self, e: OSError) -> CgptError:
        return CgptError(
            f"cannot write the data for {str(self.out_dir)!r} (in "
            f"{str(self.tmp)!r}): {e.strerror or e}; nothing was published and "
            "what was there is unchanged"
        )

    def commit(self, **info: Any) -> dict[str, Any]:
        """Close and fsync the files, write meta.json, publish the folder as ``out_dir``
        (one atomic rename), release the lock; return meta."""
        assert self.tmp is not None, "commit() after abort()"
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "splits": self._finish_splits(),
            "tokenizer": {
                "fingerprint": info.pop("tokenizer_fingerprint", None),
                "dir": info.pop("tokenizer_dir", None),
            },
            "source": info.pop("source", "synthetic"),
            "replacement_chars": int(info.pop("replacement_chars", 0)),
        }
        meta.update(info)
        meta["meta_sha256"] = meta_checksum(meta)
        try:
            with open(self.tmp / "meta.json", "w") as f:
                f.write(json.dumps(meta, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.tmp)  # the shard renames and meta.json's entry, before publishing
            make_public(self.tmp)  # private (mkdtemp) until now; published with the umask's mode
            _publish(self.tmp, self.out_dir)
        except OSError as e:
            raise self._write_error(e) from None
        self.tmp = None
        self.lock.release()
        return meta

    def _finish_splits(self) -> dict[str, Any]:
        try:
            return {s: w.finish() for s, w in self.splits.items()}
        except OSError as e:
            raise self._write_error(e) from None

    def abort(self) -> None:
        for w in getattr(self, "splits", {}).values():
            if w._fh is not None:
                w._fh.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self.lock.release(cleanup_if_unused=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp is not None:
            self.abort()


def meta_checksum(meta: dict) -> str:
    """sha256 of meta.json's content without its own ``meta_sha256`` field, as canonical
    JSON (sorted keys, no whitespace): re-indenting the file keeps it, editing a value not."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the files themselves are synced
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS or
    the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out`` (which exists: it holds the writer's lock,
    and maybe the data this replaces), then delete what was there."""
    if _exchange(tmp, out):
        old = tmp  # after the swap, the temporary name holds the old folder
    else:  # two renames: the old folder aside, the new one in
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "data")
        try:
            os.replace(tmp, out)
        except OSError as e:
            try:
                os.replace(old / "data", out)
                where = "it is unchanged"
            except OSError:
                where = f"what was there is now in {str(old / 'data')!r}"
            raise CgptError(
                f"could not move the finished data into {str(out)!r} "
                f"({e.strerror or e}; did another process create it meanwhile?); "
                f"nothing was published and {where}; run prepare again"
            ) from None
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CgptError(f"output {str(out_dir)!r} exists and is not a folder")
    if not any(p.name != LOCK_NAME for p in out_dir.iterdir()):
        return  # empty, or only the lock file of an earlier (or the current) writer
    if not (out_dir / "meta.json").is_file():
        raise CgptError(
            f"output folder {str(out_dir)!r} is not empty and is not a cgpt data "
            "folder; choose a new folder"
        )
    if not overwrite:
        raise CgptError(
            f"output folder {str(out_dir)!r} already holds prepared data; "
            "pass --force to replace it"
        )


def write_token_data(
    out_dir: str | os.PathLike,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    vocab_size: int,
    eos_id: int,
    tokenizer_fingerprint: str | None = None,
    source: str = "synthetic",
    tokenizer_dir: str | None = None,
    overwrite: bool = True,
) -> dict:
    """Write already-tokenized splits (tests, synthetic data) as a data folder; return meta.

    Documents are counted as EOS tokens. An existing data folder is replaced (atomically)
    unless ``overwrite=False``.
    """
    eos = int(eos_id)
    with ShardWriter(out_dir, vocab_size, eos, overwrite=overwrite) as w:
        for split, toks in (("train", train_tokens), ("val", val_tokens)):
            toks = np.asarray(toks).reshape(-1)
            w.write(split, toks, documents=int(np.count_nonzero(toks == eos)))
        return w.commit(
            tokenizer_fingerprint=tokenizer_fingerprint,
            source=source,
            tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
        )


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
            out.append(self.parts[p][start - self.starts[p] : end - self.starts[p]])
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
        raise CgptError(
            f"{str(folder)!r} has no meta.json: not a prepared data folder "
            "(or a prepare run did not finish); re-run `cgpt prepare`"
        )
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("format")
        if int(meta.get("version", 0)) > VERSION:
            raise CgptError(
                f"{path} has format version {meta['version']}, newer than this "
                f"cgpt reads ({VERSION}); upgrade cgpt"
            )
        if "meta_sha256" in meta and meta["meta_sha256"] != meta_checksum(meta):
            raise CgptError(
                f"{path} was edited or corrupted after prepare (its content no "
                "longer matches its meta_sha256); re-run `cgpt prepare`"
            )
        np.dtype(meta["dtype"]), int(meta["vocab_size"]), int(meta["eos_id"])
        for s in SPLITS:
            for f in meta["splits"][s]["files"]:
                f["name"], int(f["bytes"]), f["sha256"]
        _check_meta(meta, path)
    except CgptError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CgptError(
            f"{path} is not a valid cgpt meta.json ({e.__class__.__name__}: {e}); "
            "re-run `cgpt prepare`"
        ) from None
    return meta


def _check_meta(meta: dict, path: Path) -> None:
    """dtype, vocab, EOS and token counts must agree with each other (an old meta.json has no
    checksum, so a hand edit shows up only here)."""
    fix = "meta.json was edited or corrupted after prepare; re-run `cgpt prepare`"
    name, vocab, eos = str(meta["dtype"]), int(meta["vocab_size"]), int(meta["eos_id"])
    if name not in SUPPORTED_DTYPES:
        raise CgptError(
            f"{path} says dtype {name!r}, which cgpt never writes (token shards are "
            f"{' or '.join(SUPPORTED_DTYPES)}); {fix}"
        )
    dtype = np.dtype(name)
    if vocab <= 0 or vocab - 1 > np.iinfo(dtype).max:
        raise CgptError(
            f"{path} says vocab_size {vocab} with dtype {name}, which cannot hold "
            f"its ids (at most {np.iinfo(dtype).max + 1} entries); {fix}"
        )
    if not 0 <= eos < vocab:
        raise CgptError(f"{path} says eos_id {eos}, outside its vocab of {vocab}; {fix}")
    for s in SPLITS:
        split = meta["splits"][s]
        total = 0
        for f in split["files"]:
            nbytes = int(f["bytes"])
            tokens = int(f.get("tokens", nbytes // dtype.itemsize))
            if nbytes != tokens * dtype.itemsize:
                raise CgptError(
                    f"{path} says dtype {name} ({dtype.itemsize} bytes a token) but "
                    f"shard {f['name']} is recorded as {nbytes} bytes for {tokens} "
                    f"tokens; {fix}"
                )
            total += tokens
        if "tokens" in split and int(split["tokens"]) != total:
            raise CgptError(
                f"{path} says the {s} split holds {split['tokens']} tokens but its "
                f"shards hold {total}; {fix}"
            )
        top = split.get("max_token_id")
        if top is not None and not int(top) < vocab:
            raise CgptError(
                f"{path} says vocab_size {vocab} but the {s} split holds token id "
                f"{int(top)}: the vocab must exceed every token id; {fix}"
            )


def _max_token_id(arr) -> int | None:
    """Largest id in a split, read in chunks (an old meta.json does not record it)."""
    top = None
    for start in range(0, len(arr), _SCAN_TOKENS):
        m = int(np.asarray(arr[start : start + _SCAN_TOKENS]).max())
        top = m if top is None else max(top, m)
    return top


def _open_file(folder: Path, entry: dict, dtype: np.dtype, verify) -> np.ndarray:
    path = folder / entry["name"]
    if not path.is_file():
        raise CgptError(
            f"shard {entry['name']} is missing from {str(folder)!r}; re-run cgpt prepare"
        )
    size = path.stat().st_size
    if size != int(entry["bytes"]):
        raise CgptError(
            f"shard {entry['name']} has {size} bytes but meta.json records "
            f"{entry['bytes']}: it was truncated or edited after prepare; "
            "re-run cgpt prepare"
        )
    if verify is True and _sha256_file(path) != entry["sha256"]:
        raise CgptError(
            f"shard {entry['name']} fails its checksum: it was truncated or "
            "edited after prepare; re-run cgpt prepare"
        )
    if size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r")


def open_token_data(data_dir: str | os.PathLike, verify: bool | str = True) -> TokenData:
    """Open a data folder as memory maps.

    ``verify=True`` checks every file's size and sha256 (seconds per GB), ``"size"`` only the
    sizes (big corpora), ``False`` skips both. meta.json itself is always checked: its own
    checksum (when it has one), a supported dtype consistent with the recorded sizes and
    token counts, and a vocab larger than every token id (recorded at prepare time; for an
    older meta.json without it, found by a scan when ``verify=True``). Problems raise
    :class:`CgptError`.
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
        if verify is True and "max_token_id" not in meta["splits"][s]:
            # an older meta.json: scan for the largest id (reads every byte, as sha256 did)
            top = _max_token_id(arrays[s])
            if top is not None and top >= int(meta["vocab_size"]):
                raise CgptError(
                    f"the {s} split of {str(folder)!r} holds token id {top} but "
                    f"meta.json says vocab_size {meta['vocab_size']}: the vocab "
                    "must exceed every token id; meta.json was edited or the "
                    "shards come from another tokenizer; re-run `cgpt prepare`"
                )
    return TokenData(dir=folder, meta=meta, train=arrays["train"], val=arrays["val"])


def check_vocab(data: TokenData, model_vocab_size: int, tokenizer=None) -> None:
    """Raise CgptError unless the data, the model and (optionally) the tokenizer agree.

    The model's vocab is the data's, or that padded up to a multiple of
    cgpt.model.sizes.VOCAB_PAD_MULTIPLE; a given tokenizer must be the one that produced
    the shards (same fingerprint and vocab).
    """
    if not vocab_fits(model_vocab_size, data.vocab_size):
        raise CgptError(
            f"model.vocab_size is {model_vocab_size} but the data in {str(data.dir)!r} was "
            f"tokenized with a vocab of {data.vocab_size} (a model's vocab is its data's, or "
            f"that padded up to a multiple of {VOCAB_PAD_MULTIPLE}: "
            f"{padded_vocab(data.vocab_size)}); add --set model.vocab_size={data.vocab_size}"
        )
    if tokenizer is None:
        return
    if tokenizer.vocab_size != data.vocab_size:
        raise CgptError(
            f"tokenizer {getattr(tokenizer, 'dir', '')!s} has vocab "
            f"{tokenizer.vocab_size} but the data in {str(data.dir)!r} was "
            f"tokenized with vocab {data.vocab_size}; use the tokenizer recorded "
            f"in meta.json ({data.tokenizer_dir}) or re-run cgpt prepare"
        )
    fp = getattr(tokenizer, "fingerprint", None)
    if data.fingerprint and fp and fp != data.fingerprint:
        raise CgptError(
            f"tokenizer {getattr(tokenizer, 'dir', '')!s} is not the one that "
            f"produced the data in {str(data.dir)!r} (fingerprint {fp[:12]} vs "
            f"{data.fingerprint[:12]}); use {data.tokenizer_dir} or re-run "
            "cgpt prepare"
        )
