"""Tokenizers behind one small interface (``encode``, ``encode_batch``, ``decode``,
``vocab_size``, ``eos_id``, ``fingerprint``, ``dir``): our sentencepiece BPE (with an
identical Hugging Face ``tokenizer.json``) or any Hugging Face tokenizer folder; the
fingerprint ties shards to the tokenizer that made them. Details: docs/DESIGN-NOTES.md,
data/tokenizer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.files import make_public
from cgpt.model.sizes import CONTEXT
from cgpt.train.data.sources import open_source

EOS = "<|endoftext|>"  # GPT-2's end-of-text token, which Cerebras-GPT inherits
UNK = "<unk>"
META_FILE = "cgpt_tokenizer.json"
# a sentencepiece "sentence" is one training sample; long documents are cut at line ends
_CHUNK_CHARS = 4096


def _fingerprint(folder: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        h.update((folder / name).read_bytes())
    return h.hexdigest()


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, folder: str | os.PathLike):
        import sentencepiece as spm

        self.dir = str(folder)
        path = Path(folder) / "tokenizer.model"
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise CgptError(f"{path} is not a valid sentencepiece model ({e})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id = self.sp.eos_id()
        if self.eos_id < 0:
            raise CgptError(f"sentencepiece model {path} has no EOS token")
        self.fingerprint = _fingerprint(Path(folder), ["tokenizer.model"])
        self.num_threads = -1

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # num_threads: sentencepiece's own C++ threads (-1: all cores); prepare's worker
        # processes set 1, since the process pool is already the parallelism
        return self.sp.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def __reduce__(self):  # workers re-open from the folder instead of pickling the model
        return (SentencePieceTokenizer, (self.dir,))


class HFTokenizer:
    kind = "huggingface"

    def __init__(self, folder: str | os.PathLike):
        # deferred: cgpt.model.hf imports torch; cgpt's start imports this module
        from cgpt.model.hf import load_rust_tokenizer, special_ids

        self.dir = str(folder)
        folder = Path(folder)
        try:
            self.tok, files = load_rust_tokenizer(folder)
        except CgptError as e:
            raise CgptError(f"cannot load the tokenizer in {str(folder)!r}: {e}") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        # the same bos/eos rule the export writes into config.json (cgpt.model.hf)
        ids = special_ids(folder, self.tok)
        if ids["eos"] is None:
            raise CgptError(
                f"tokenizer in {str(folder)!r} has no end-of-text token (looked for "
                f"eos_token in its config, {EOS}, </s>, <eos>)"
            )
        self.eos_id, self.bos_id = int(ids["eos"]), ids["bos"]
        self.fingerprint = _fingerprint(folder, files)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __reduce__(self):
        return (HFTokenizer, (self.dir,))


def load_tokenizer(folder: str | os.PathLike):
    """Open a tokenizer folder: ours (sentencepiece) or any Hugging Face one."""
    path = Path(folder)
    if not path.is_dir():
        raise CgptError(
            f"tokenizer folder {str(path)!r} not found; train one with "
            "`cgpt tokenizer train` or point at a Hugging Face tokenizer folder"
        )
    if (path / "tokenizer.model").is_file():
        return SentencePieceTokenizer(path)
    if (path / "tokenizer.json").is_file() or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    ):
        return HFTokenizer(path)
    raise CgptError(
        f"{str(path)!r} holds no tokenizer (expected tokenizer.model, "
        "tokenizer.json, or vocab.json + merges.txt)"
    )


# ---------------------------------------------------------------------------- training
def _chunks(docs: Iterable[str]) -> Iterator[str]:
    """Cut documents into training sentences of at most _CHUNK_CHARS at line ends, keeping
    the newlines (so pieces can learn indentation after a newline)."""
    for doc in docs:
        buf: list[str] = []
        size = 0
        for line in doc.splitlines(keepends=True):
            while len(line) > _CHUNK_CHARS:
                if buf:
                    yield "".join(buf)
                    buf, size = [], 0
                yield line[:_CHUNK_CHARS]
                line = line[_CHUNK_CHARS:]
            if size + len(line) > _CHUNK_CHARS and buf:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        if buf:
            yield "".join(buf)


def _sp_options(vocab_size: int, character_coverage: float, max_sentences: int) -> dict:
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",  # no NFKC: text round-trips exactly
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=4 * _CHUNK_CHARS,  # bytes; a chunk is at most 4 bytes/char
        unk_id=0,
        unk_piece=UNK,
        eos_id=1,
        eos_piece=EOS,
        bos_id=-1,
        pad_id=-1,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=1,  # one thread: the same input gives byte-identical models
        minloglevel=2,
    )


def train_tokenizer(
    source_spec: str,
    vocab_size: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    max_docs: int | None = None,
    text_field: str = "text",
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
    force: bool = False,
):
    """Train a sentencepiece BPE tokenizer on a source and write it, plus its Hugging Face
    twin, to ``out_dir`` (built under a temporary name, renamed at the end). Returns the
    loaded :class:`SentencePieceTokenizer`."""
    import sentencepiece as spm

    out = Path(out_dir)
    check_out_dir(out, force)
    if vocab_size < 260:
        raise CgptError(
            f"vocab size {vocab_size} is too small: the 256 byte-fallback pieces "
            "and 2 specials alone need 258; use at least 260"
        )
    source = open_source(source_spec, text_field=text_field, max_docs=max_docs)
    with new_tokenizer_folder(out) as tmp:
        spm.set_random_generator_seed(seed)
        try:
            model = io.BytesIO()  # in memory: a model_prefix path would be stored in it
            spm.SentencePieceTrainer.train(
                sentence_iterator=_chunks(source),
                model_writer=model,
                **_sp_options(vocab_size, character_coverage, max_sentences),
            )
        except RuntimeError as e:
            raise CgptError(_explain_sp_error(e, source, vocab_size)) from None
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        _write_hf_files(tmp, model_max_length=CONTEXT)
        meta = {
            "kind": "sentencepiece",
            "vocab_size": vocab_size,
            "seed": seed,
            "source": source.description,
            "documents": source.stats.documents,
            "replacement_chars": source.stats.replacement_chars,
            "options": _sp_options(vocab_size, character_coverage, max_sentences),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return load_tokenizer(out)


@contextlib.contextmanager
def new_tokenizer_folder(out: Path) -> Iterator[Path]:
    """A private temporary folder beside ``out`` to build a tokenizer in, published as
    ``out`` (umask modes, replacing an old one) when the block ends without an error;
    removed otherwise. `cgpt tokenizer train` and `cgpt tokenizer gpt2` both build in it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        make_public(tmp)  # mkdtemp made it private; the result is an ordinary folder (umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _explain_sp_error(e: Exception, source, vocab_size: int) -> str:
    """sentencepiece's trainer errors, mapped to the fix for each (the numbers are its own)."""
    import re

    msg = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
    if source.stats.documents == 0:
        return f"input {source.spec!r} holds no documents (all empty?); nothing to train on"
    docs = f"{source.stats.documents:,} document{'s' if source.stats.documents != 1 else ''}"
    # "Vocabulary size is smaller than required_chars. 300 vs 332. Increase vocab_size or
    # decrease character_coverage": the corpus has more distinct characters (plus the 256
    # byte pieces and the specials) than the vocab has room for
    m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        need = int(m.group(2))
        return (
            f"a vocab of {vocab_size} is too small for the characters of the corpus "
            f"({docs}): their pieces plus the 256 byte pieces and the specials need "
            f"{need}; raise --vocab-size to at least {need}, or lower "
            "--character-coverage so that rare characters fall back to bytes"
        )
    # "Vocabulary size too high (50000). Please set it to a value <= 1915.": the corpus has
    # too little text to learn that many pieces
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        most = int(m.group(2))
        return (
            f"the corpus ({docs}) is too small for a vocab of {vocab_size}: it yields at "
            f"most {most} pieces; lower --vocab-size to at most {most}, or give more text "
            "(a larger --max-docs or more input)"
        )
    if "Vocabulary size" in msg or "vocab_size" in msg:
        return f"sentencepiece cannot train a vocab of {vocab_size} on this corpus ({docs}): {msg}"
    return f"sentencepiece training failed: {msg}"


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force`` and it holds a tokenizer (never replace
    anything else, even with --force)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise CgptError(
                f"output {str(out)!r} already exists and is not empty; pass "
                "--force to replace it or choose a new folder"
            )
        if not out.is_dir() or not any(
            (out / n).exists() for n in ("tokenizer.model", "tokenizer.json", META_FILE)
        ):
            raise CgptError(
                f"output {str(out)!r} is not a tokenizer folder; refusing to "
                "replace it even with --force"
            )


# ---------------------------------------------------------------------------- HF twin
def _sp_pieces(model_path: Path) -> list[tuple[str, int]]:
    """(piece, type) for every id of a sentencepiece model; types: 1 normal, 2 unknown,
    3 control, 4 user-defined, 6 byte (sentencepiece_model.proto)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    out = []
    for i in range(sp.get_piece_size()):
        kind = 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        out.append((sp.id_to_piece(i), kind))
    return out


def _merges(vocab: dict[str, int], normal: list[str]) -> list[tuple[str, str]]:
    """BPE merges that rebuild every multi-character piece, ranked like sentencepiece ranks
    its pieces (earlier id = higher score = merged first)."""
    ranked = []
    for piece in normal:
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                ranked.append((vocab[piece], vocab[a], vocab[b], a, b))
    ranked.sort()
    return [(a, b) for _, _, _, a, b in ranked]


def build_hf_tokenizer(model_path: str | os.PathLike):
    """A `tokenizers.Tokenizer` that encodes exactly like our sentencepiece BPE model:
    spaces become U+2581, BPE with the sentencepiece vocab, bytes for unknown characters."""
    from tokenizers import AddedToken, decoders, normalizers
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE

    pieces = _sp_pieces(Path(model_path))
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    normal = [p for p, t in pieces if t == 1]
    tok = RustTokenizer(
        BPE(
            vocab=vocab,
            merges=_merges(vocab, normal),
            unk_token=UNK,
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # sentencepiece never matches control tokens inside text, so neither may we
    tok.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p, t in pieces if t in (2, 3)]
    )
    return tok


def _write_hf_files(folder: Path, model_max_length: int) -> None:
    tok = build_hf_tokenizer(folder / "tokenizer.model")
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "unk_token": UNK,
        "bos_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,  # text "<|endoftext|>" is text, as in sentencepiece
        "model_max_length": model_max_length,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": EOS, "unk_token": UNK}, indent=2) + "\n"
    )
