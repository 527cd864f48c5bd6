"""Where text comes from: one spec string (``stdlib``, a local path, ``hf:NAME[:CONFIG]``)
-> a stream of documents. Bytes that are not UTF-8 are replaced and counted, empty documents
skipped and counted, never dropped silently. The specs: docs/DESIGN-NOTES.md, data/sources.
"""

from __future__ import annotations

import codecs
import glob
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cgpt.model.errors import CgptError

TEXT_EXT = {".txt", ".text", ".md"}
BUILDERS = {
    **{e: "text" for e in TEXT_EXT},
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
# stdlib folders that are test suites (some hold deliberately broken encodings) or not stdlib
_STDLIB_TESTS = {"test", "tests", "idle_test"}  # kept by stdlib:tests=1
_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__"} | _STDLIB_TESTS

# A codec error handler that replaces like "replace" and counts what it replaced. Codec
# handlers are process-global, so Source reads the counter before and after each document.
_replaced = [0]


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):  # registered for decoding only
        raise err
    _replaced[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("cgpt-count-replace", _count_and_replace)


@dataclass
class SourceStats:
    documents: int = 0  # documents yielded
    empty_documents: int = 0  # skipped: empty text or null field
    replacement_chars: int = 0  # undecodable bytes replaced by U+FFFD
    chars: int = 0


def _hub_offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def stdlib_files(tests: bool = False) -> list[Path]:
    """The standard library's ``*.py`` files in sorted order (site-packages out; its test
    suites only with ``tests``: about 17 MB more Python on CPython 3.11)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = _STDLIB_SKIP - _STDLIB_TESTS if tests else _STDLIB_SKIP
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out)


def _parse_options(text: str, spec: str) -> dict[str, str]:
    opts = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise CgptError(f"source {spec!r}: expected key=value options after ':', got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = v.strip()
    return opts


def _local_files(spec: str) -> list[Path]:
    if any(c in spec for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        if not files:
            raise CgptError(f"input glob {spec!r} matches no files")
        return files
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        everything = sorted(p for p in path.rglob("*") if p.is_file())
        files = [
            p
            for p in everything
            if p.suffix.lower() in BUILDERS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not files:
            kinds = sorted({p.suffix or p.name for p in everything})[:10]
            raise CgptError(
                f"input folder {spec!r} holds no .txt/.md/.jsonl/.json/.parquet "
                f"files (found: {', '.join(kinds) or 'nothing'})"
            )
        return files
    raise CgptError(
        f"input {spec!r} not found: give a file, a folder, a glob, 'stdlib' or hf:NAME[:CONFIG]"
    )


def _group_by_builder(files: list[Path]) -> list[tuple[str, list[str]]]:
    """Consecutive runs of files that one `datasets` builder reads, in file order."""
    groups: list[tuple[str, list[str]]] = []
    for f in files:
        builder = _builder(f)
        if groups and groups[-1][0] == builder:
            groups[-1][1].append(str(f))
        else:
            groups.append((builder, [str(f)]))
    return groups


def _builder(f: Path) -> str:
    return BUILDERS.get(f.suffix.lower(), "text")  # an explicit odd file: plain text


def json_rows(path: Path) -> int:
    """Records in a JSON input as ``datasets`` reads it: the elements of a top-level array,
    else one per line (JSON lines; a blank line counts too, so this may overshoot).
    Counting newlines runs at disk speed, far faster than tokenizing the same bytes."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith(b"["):  # one JSON document; datasets loads it whole as well
            import json

            data = json.load(f)
            return len(data) if isinstance(data, list) else 1
        rows, last = 0, b"\n"
        for block in iter(lambda: f.read(1 << 24), b""):
            rows, last = rows + block.count(b"\n"), block[-1:]
        return rows + (last != b"\n")  # a last line without its newline


def _file_rows(f: Path) -> int:
    builder = _builder(f)
    if builder == "parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(f).num_rows
    return json_rows(f) if builder == "json" else 1


class Source:
    """An iterable of documents (str) from a spec; ``stats`` fills in while iterating."""

    def __init__(
        self,
        spec: str = "stdlib",
        text_field: str = "text",
        split: str = "train",
        max_docs: int | None = None,
    ):
        self.spec = (spec or "stdlib").strip()
        self.text_field, self.split = text_field, split
        self.max_docs = max_docs
        self.stats = SourceStats()
        self.stdlib_tests = False  # stdlib:tests=1
        self.kind, self._target = self._resolve()

    def _resolve(self):
        spec = self.spec
        if spec == "stdlib" or spec.startswith("stdlib:"):
            opts = _parse_options(spec[len("stdlib:") :], spec)
            unknown = set(opts) - {"max_docs", "tests"}
            if unknown:
                raise CgptError(
                    f"source {spec!r}: unknown option(s) {sorted(unknown)}; valid: max_docs, tests"
                )
            if opts.get("tests", "0") not in ("0", "1"):
                raise CgptError(f"source {spec!r}: tests must be 0 or 1")
            if "max_docs" in opts:
                try:
                    n = int(opts["max_docs"])
                except ValueError:
                    raise CgptError(f"source {spec!r}: max_docs must be an integer") from None
                self.max_docs = n if self.max_docs is None else min(n, self.max_docs)
            self.stdlib_tests = opts.get("tests") == "1"
            return "stdlib", stdlib_files(tests=self.stdlib_tests)
        if spec.startswith("hf:"):
            name, _, config = spec[3:].partition(":")
            if not name:
                raise CgptError(f"source {spec!r}: expected hf:NAME or hf:NAME:CONFIG")
            return "hub", (name, config or None)
        return "local", _local_files(spec)

    @property
    def description(self) -> str:
        cap = f", first {self.max_docs} documents" if self.max_docs is not None else ""
        if self.kind == "stdlib":
            root = sysconfig.get_paths()["stdlib"]
            tests = ", test suites included" if self.stdlib_tests else ""
            return f"stdlib: *.py files under {root}{tests}{cap}"
        if self.kind == "hub":
            name, config = self._target
            return (
                f"hf:{name}{':' + config if config else ''} split={self.split} "
                f"field={self.text_field}{cap}"
            )
        files = self._target
        where = str(files[0]) if len(files) == 1 else f"{len(files)} files from {self.spec}"
        return f"local: {where}{cap}"

    def progress_total(self) -> tuple[int, str] | None:
        """What a progress bar counts up to, known before the documents are read:
        ``(bytes, "B")`` when every document is a whole file (stdlib, .txt/.md);
        ``(rows, " rows")`` for JSON lines, JSON and parquet inputs (a text file counts as one
        row; parquet rows from the file metadata, JSON rows by :func:`json_rows`);
        ``(n, " docs")`` under a document cap; None for the Hub without a cap. Either may
        overshoot a little (empty documents are skipped; prepare sets the final count)."""
        if self.kind == "hub":
            return (self.max_docs, " docs") if self.max_docs else None
        files: list[Path] = self._target
        try:
            if self.kind == "stdlib" or all(_builder(f) == "text" for f in files):
                n, unit = sum(f.stat().st_size for f in files), "B"
            else:
                n, unit = sum(_file_rows(f) for f in files), " rows"
        except (OSError, ValueError):
            return None  # the read itself reports an unreadable file, with its name
        if self.max_docs is not None:
            n, unit = min(self.max_docs, len(files) if unit == "B" else n), " docs"
        return (n, unit) if n > 0 else None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[str]:
        self.stats = SourceStats()
        raw = {"stdlib": self._iter_stdlib, "hub": self._iter_hub, "local": self._iter_local}[
            self.kind
        ]()
        for text in raw:
            if self.max_docs is not None and self.stats.documents >= self.max_docs:
                break
            if not text:
                self.stats.empty_documents += 1
                continue
            self.stats.documents += 1
            self.stats.chars += len(text)
            yield text

    def _decode(self, data: bytes) -> str:
        before = _replaced[0]
        text = data.decode("utf-8", errors="cgpt-count-replace")
        self.stats.replacement_chars += _replaced[0] - before
        return text

    def _iter_stdlib(self) -> Iterator[str]:
        for path in self._target:
            yield self._decode(path.read_bytes())

    def _iter_local(self) -> Iterator[str]:
        for builder, files in _group_by_builder(self._target):
            yield from self._iter_dataset(builder, files)

    def _iter_dataset(self, builder: str, files: list[str]) -> Iterator[str]:
        import datasets

        kwargs = (
            {"sample_by": "document", "encoding_errors": "cgpt-count-replace"}
            if builder == "text"
            else {}
        )
        try:
            ds = datasets.load_dataset(
                builder, data_files=files, split="train", streaming=True, **kwargs
            )
            yield from self._fields(ds, files[0] if len(files) == 1 else f"{builder} files")
        except CgptError:
            raise
        except (UnicodeDecodeError, ValueError, TypeError, OSError) as e:
            if builder == "text":
                raise
            raise CgptError(
                f"could not read {builder} input {files[0]!r}"
                f"{f' (or one of {len(files)} files)' if len(files) > 1 else ''}: "
                f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}; "
                f"{builder} files must be valid UTF-8 {builder}"
            ) from None

    def _fields(self, ds, where: str) -> Iterator[str]:
        before = _replaced[0]
        for i, example in enumerate(ds):
            if self.text_field not in example:
                raise CgptError(
                    f"{where} has no field {self.text_field!r}; its fields are: "
                    f"{', '.join(sorted(example)) or '(none)'}; pass "
                    "--text-field NAME"
                )
            value = example[self.text_field]
            if value is not None and not isinstance(value, str):
                raise CgptError(
                    f"{where}: field {self.text_field!r} of record {i} is a "
                    f"{type(value).__name__}, not text; pick a text field"
                )
            self.stats.replacement_chars += _replaced[0] - before
            before = _replaced[0]
            yield value or ""

    def _iter_hub(self) -> Iterator[str]:
        name, config = self._target
        if _hub_offline():
            raise CgptError(
                f"cannot stream hf:{name}: the Hugging Face Hub is offline here "
                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); use local files "
                "(--input PATH to .txt/.jsonl/.parquet) or the offline default "
                "'stdlib'"
            )
        import datasets

        try:
            ds = datasets.load_dataset(name, config, split=self.split, streaming=True)
            yield from self._fields(ds, f"hf:{name}")
        except CgptError:
            raise
        except Exception as e:  # the hub client raises many types for "no network/no such"
            raise CgptError(
                f"cannot stream hf:{name}{':' + config if config else ''} "
                f"(split {self.split}): {e.__class__.__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}; without "
                "network access use local files (--input PATH) or 'stdlib'"
            ) from None


def open_source(
    spec: str = "stdlib",
    text_field: str = "text",
    split: str = "train",
    max_docs: int | None = None,
) -> Source:
    """Resolve a spec (raising CgptError for a missing path, bad option, ...) without
    reading any document yet."""
    return Source(spec, text_field=text_field, split=split, max_docs=max_docs)


def iter_documents(
    spec: str = "stdlib",
    text_field: str = "text",
    split: str = "train",
    max_docs: int | None = None,
) -> Iterator[str]:
    """The documents of a source, one string each, in a deterministic order."""
    return iter(open_source(spec, text_field=text_field, split=split, max_docs=max_docs))
