"""cgpt prepare: round trip, counts, determinism, uint32 vocabs, bad input, the CLI verbs, one
writer per output folder, synced files, progress lines in logs."""

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError
from cgpt.train.data.prepare import _Progress, prepare, val_mask
from cgpt.train.data.shards import meta_checksum, open_token_data
from cgpt.train.data.sources import iter_documents
from cgpt.train.data.tokenizer import load_tokenizer, train_tokenizer

DOCS = "stdlib:max_docs=40"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "sp"
    train_tokenizer("stdlib:max_docs=30", 500, out)
    return out


def _split_docs(tokens, eos):
    ends = np.flatnonzero(np.asarray(tokens) == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [np.asarray(tokens[s:e]) for s, e in zip(starts, ends)]


def test_round_trip_counts_and_split(tok_dir, tmp_path):
    meta = prepare(DOCS, tok_dir, tmp_path / "d", val_fraction=0.1, num_proc=2)
    tok, data = load_tokenizer(tok_dir), open_token_data(tmp_path / "d")
    docs = list(iter_documents(DOCS))
    mask = val_mask(0, len(docs), 0.1)
    assert mask.sum() == 4 and mask[0]  # exactly the fraction, document 0 first
    for split, want in (
        ("train", [d for d, m in zip(docs, mask) if not m]),
        ("val", [d for d, m in zip(docs, mask) if m]),
    ):
        got = _split_docs(data.split(split), tok.eos_id)
        assert [tok.decode(g) for g in got] == want
        assert meta["splits"][split]["tokens"] == sum(len(tok.encode(d)) + 1 for d in want)
        assert meta["splits"][split]["documents"] == len(want)
        # the text behind the tokens, for bits per byte (cgpt eval --data)
        assert meta["splits"][split]["text_bytes"] == sum(len(d.encode()) for d in want)
    assert data.dtype == np.uint16 and data.fingerprint == tok.fingerprint
    assert data.tokenizer_dir == str(tok_dir.resolve())
    assert meta["documents"] == 40 and meta["replacement_chars"] == 0
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["source"].startswith("stdlib")


def test_byte_identical_whatever_the_worker_count(tok_dir, tmp_path):
    prepare(DOCS, tok_dir, tmp_path / "a", num_proc=2)
    prepare(DOCS, tok_dir, tmp_path / "b", num_proc=1)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_non_utf8_is_counted_in_meta(tok_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"plain\n")
    meta = prepare(str(tmp_path / "in"), tok_dir, tmp_path / "d", val_fraction=0.5)
    assert meta["replacement_chars"] == 1 and meta["documents"] == 2


def test_vocab_beyond_uint16_writes_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70000)}
    vocab.update({"[UNK]": 70000, "<|endoftext|>": 70001})
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    t.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("w0")  # document 0: the val split
    (tmp_path / "in" / "b.txt").write_text("w1 w69999 w65536 nope")
    meta = prepare(str(tmp_path / "in"), tmp_path / "tok", tmp_path / "d", val_fraction=0.5)
    data = open_token_data(tmp_path / "d")
    assert meta["dtype"] == "uint32"
    assert data.train.tolist() == [1, 69999, 65536, 70000, 70001]
    assert meta["splits"]["train"]["max_token_id"] == 70001
    assert meta["splits"]["val"]["max_token_id"] == 70001  # w0 + EOS


def test_bad_input_leaves_nothing(tok_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(CgptError, match="holds no documents"):
        prepare(str(tmp_path / "empty"), tok_dir, tmp_path / "d")
    (tmp_path / "f.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CgptError, match="its fields are: body"):
        prepare(str(tmp_path / "f.jsonl"), tok_dir, tmp_path / "d", num_proc=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "f.jsonl"]
    prepare(DOCS, tok_dir, tmp_path / "d", num_proc=1)
    with pytest.raises(CgptError, match="--force"):
        prepare(DOCS, tok_dir, tmp_path / "d")
    prepare("stdlib:max_docs=3", tok_dir, tmp_path / "d", force=True)
    assert open_token_data(tmp_path / "d").meta["documents"] == 3


def test_cli_tokenizer_train_and_prepare(tmp_path, capsys):
    tok, data = str(tmp_path / "tok"), str(tmp_path / "data")
    assert (
        cli(
            [
                "tokenizer",
                "train",
                "--input",
                "stdlib:max_docs=20",
                "--vocab-size",
                "400",
                "--out",
                tok,
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "prepare",
                "--input",
                "stdlib:max_docs=20",
                "--tokenizer",
                tok,
                "--out",
                data,
                "--val-fraction",
                "0.1",
                "--num-proc",
                "1",
            ]
        )
        == 0
    )
    assert "tokens/s" in capsys.readouterr().out
    assert open_token_data(data).meta["documents"] == 20
    assert (
        cli(
            [
                "prepare",
                "--input",
                str(tmp_path / "missing"),
                "--tokenizer",
                tok,
                "--out",
                str(tmp_path / "d2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("cgpt prepare: error: input") and "Traceback" not in err
    assert (
        cli(
            [
                "prepare",
                "--input",
                "stdlib:max_docs=2",
                "--tokenizer",
                tok,
                "--out",
                data,
                "--val-fraction",
                "1.5",
            ]
        )
        == 2
    )
    assert cli(["tokenizer", "train", "--vocab-size", "400", "--out", tok]) == 2
    assert "--force" in capsys.readouterr().err


# ---- one writer per output folder ------------------------------------------------------------
_CHILD = r"""
import sys, time
from pathlib import Path
import cgpt.train.data.prepare as P

real_chunked, go = P._chunked, Path(sys.argv[3])

def gated(docs, n):  # hold the lock (taken before reading) until the test says go
    while not go.exists():
        time.sleep(0.02)
    yield from real_chunked(docs, n)

P._chunked = gated
meta = P.prepare("stdlib:max_docs=40", sys.argv[1], sys.argv[2], num_proc=1)
print("documents", meta["documents"])
"""


def _wait_for_holder(lock: Path, pid: int, proc, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the first prepare never took the lock")


@pytest.mark.slow
def test_two_prepares_into_one_folder(tok_dir, tmp_path, capsys):
    """The second concurrent prepare is refused with the holder named; the first finishes and
    nothing it wrote is lost."""
    out, go = tmp_path / "d", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tok_dir), str(out), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_holder(out / ".cgpt.lock", proc.pid, proc)
        for force in ([], ["--force"]):
            assert (
                cli(
                    [
                        "prepare",
                        "--input",
                        "stdlib:max_docs=3",
                        "--tokenizer",
                        str(tok_dir),
                        "--out",
                        str(out),
                        "--num-proc",
                        "1",
                        *force,
                    ]
                )
                == 2
            )
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err
            assert f"is in use by pid {proc.pid} on host {socket.gethostname()}" in err
        go.touch()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "documents 40" in stdout
    data = open_token_data(out)  # verify=True: every checksum of the first run's data
    assert data.meta["documents"] == 40
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders
    # the lock went with its holder: the folder is free for the next (forced) prepare
    prepare("stdlib:max_docs=3", tok_dir, out, num_proc=1, force=True)
    assert open_token_data(out).meta["documents"] == 3


def test_files_and_folder_are_synced_before_publishing(tok_dir, tmp_path, monkeypatch):
    from cgpt.train.data import shards

    events = []
    real_fsync, real_publish = os.fsync, shards._publish

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def publish(tmp, out):
        events.append(("publish", out.name))
        return real_publish(tmp, out)

    monkeypatch.setattr(shards.os, "fsync", fsync)
    monkeypatch.setattr(shards, "_publish", publish)
    prepare(DOCS, tok_dir, tmp_path / "d", num_proc=1)
    cut = events.index(("publish", "d"))
    synced = {name for kind, name in events[:cut]}
    tmp_name = [n for n in synced if n.startswith(".d.") and n.endswith(".tmp")]
    assert {"train-00000.bin", "val-00000.bin", "meta.json"} <= synced and tmp_name
    assert ("fsync", tmp_path.name) in events[cut:]  # the parent, after the rename


def _quick_log_lines(monkeypatch, chunk_chars=None):
    """No start-up delay and a line at every update, so a test-sized run shows its log."""
    from cgpt.train.data import prepare as prep

    monkeypatch.setattr(prep._Progress, "DELAY_S", 1e-6)  # > 0: no line at 0 %, before work
    monkeypatch.setattr(prep._Progress, "LOG_INTERVAL_S", 0.0)
    if chunk_chars:
        monkeypatch.setattr(prep, "CHUNK_CHARS", chunk_chars)


def test_progress_lines_in_logs(tok_dir, tmp_path, capsys, monkeypatch):
    _quick_log_lines(monkeypatch)
    argv = ["prepare", "--input", "stdlib:max_docs=300", "--tokenizer", str(tok_dir)]
    assert cli([*argv, "--out", str(tmp_path / "d"), "--num-proc", "1"]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.err  # stderr is not a terminal here: whole lines only
    lines = cap.err.splitlines()
    assert lines and all(ln.startswith("prepare: ") and "%" in ln and "<" in ln for ln in lines)
    assert lines[-1].startswith("prepare: 100% 300/300 docs")
    assert "on 1 process\n" in cap.out  # not "1 processes"


_ETA_LINE = re.compile(r"^prepare: +(\d+)% [\d,]+/[\d,]+ rows \[\d\d:\d\d<(\d\d:\d\d), ")


def test_progress_on_jsonl_has_percent_and_eta_in_a_log(tok_dir, tmp_path, capsys, monkeypatch):
    """JSON lines: the total is the file's rows, so a log line carries a % and an ETA
    (before: ``7.50MB [00:02, 3.52MB/s]``, no total)."""
    src = tmp_path / "corpus.jsonl"
    with src.open("w") as f:
        for doc in iter_documents("stdlib:max_docs=120"):
            f.write(json.dumps({"text": doc}) + "\n")
    _quick_log_lines(monkeypatch, chunk_chars=20_000)  # many chunks: many updates
    argv = ["prepare", "--input", str(src), "--tokenizer", str(tok_dir), "--num-proc", "1"]
    assert cli([*argv, "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    found = [_ETA_LINE.match(ln) for ln in err.splitlines()]
    assert found and all(found), err
    assert any(int(m.group(1)) < 100 and m.group(2) != "00:00" for m in found), err
    assert err.splitlines()[-1].startswith("prepare: 100% 120/120 rows")


def test_progress_totals_of_json_and_parquet(tmp_path):
    """Rows where the format says (parquet metadata, JSON lines/array), bytes for text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cgpt.train.data.sources import open_source

    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(37)]}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "d{i}"}}\n' for i in range(5)))
    (tmp_path / "c.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    (tmp_path / "d.txt").write_text("one whole document")
    assert open_source(str(tmp_path)).progress_total() == (37 + 5 + 2 + 1, " rows")
    assert open_source(str(tmp_path / "a.parquet"), max_docs=10).progress_total() == (10, " docs")
    assert open_source(str(tmp_path / "d.txt")).progress_total() == (18, "B")


def test_progress_without_a_known_total(monkeypatch):
    _quick_log_lines(monkeypatch)
    buf = io.StringIO()
    bar = _Progress(True, None, file=buf)
    bar.update(10, 10, 1000, 50)
    bar.update(20, 20, 2000, 90)
    bar.update(30, 30, 3000, 120, final=True)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2 and "\r" not in buf.getvalue()
    assert "2.00kB" in lines[-2] and "3.00kB" in lines[-1] and "120 tokens" in lines[-1]
    assert "%" not in buf.getvalue()


def test_meta_records_max_ids_and_its_own_checksum(tok_dir, tmp_path):
    prepare(DOCS, tok_dir, tmp_path / "d", num_proc=1)
    on_disk = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert on_disk["meta_sha256"] == meta_checksum(on_disk)
    data = open_token_data(tmp_path / "d")
    for split in ("train", "val"):
        assert on_disk["splits"][split]["max_token_id"] == int(np.max(data.split(split)))


# ---- bad input: one line, exit 2, nothing on disk changed ---------------------------------------
def _digest(root: Path) -> dict:
    """Every file and folder under root with its content hash. The lock file is left out: a
    prepare refused after taking the lock leaves FolderLock's holder note, by design."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".cgpt.lock":
            continue
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _one_doc(tmp):
    (tmp / "one").mkdir()
    (tmp / "one" / "a.txt").write_text("a single document\n")
    return str(tmp / "one")


def _empty_docs(tmp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "a.txt").write_text("")
    (tmp / "empty" / "b.jsonl").write_text('{"text": ""}\n{"text": null}\n')
    return str(tmp / "empty")


def _existing(tmp, tok):
    prepare("stdlib:max_docs=5", tok, tmp / "d", num_proc=1)
    return str(tmp / "d")


def _foreign(tmp, tok):
    (tmp / "d").mkdir()
    (tmp / "d" / "notes.txt").write_text("mine")
    return str(tmp / "d")


def _held(tmp, tok):
    """A data folder another writer holds (the lock is per open file, so a second acquire
    from this very process is refused just like another process's)."""
    from cgpt.train.lock import FolderLock

    path = _existing(tmp, tok)
    _held.lock = FolderLock(path, "prepare output").acquire()
    return path


BAD = {  # name: (setup(tmp, tok) -> extra argv, pattern of the one stderr line)
    "one document: no train tokens": (
        lambda t, k: ["--input", _one_doc(t), "--out", str(t / "d")],
        r"gave 1 document \(\d+ tokens, EOS included\).*train split would hold 0 tokens.*"
        r"at least 2 documents",
    ),
    "one document over existing data (--force)": (
        lambda t, k: ["--input", _one_doc(t), "--out", _existing(t, k), "--force"],
        r"train split would hold 0 tokens",
    ),
    "only empty documents": (
        lambda t, k: ["--input", _empty_docs(t), "--out", str(t / "d")],
        r"holds no documents \(3 empty ones skipped\)",
    ),
    "val fraction 0": (
        lambda t, k: ["--out", str(t / "d"), "--val-fraction", "0"],
        r"--val-fraction 0 would leave the val split empty.*cgpt train",
    ),
    "val fraction 1.5": (
        lambda t, k: ["--out", str(t / "d"), "--val-fraction", "1.5"],
        r"--val-fraction must be in \(0, 1\), got 1.5",
    ),
    "existing data without --force": (
        lambda t, k: ["--out", _existing(t, k)],
        r"already holds prepared data; pass --force",
    ),
    "foreign folder": (
        lambda t, k: ["--out", _foreign(t, k), "--force"],
        r"not a cgpt data folder",
    ),
    "missing input": (
        lambda t, k: ["--input", str(t / "missing"), "--out", str(t / "d")],
        r"not found",
    ),
    "jsonl without the field": (
        lambda t, k: [
            "--input",
            _write(t / "f.jsonl", '{"body": "x"}\n'),
            "--out",
            str(t / "d"),
            "--num-proc",
            "2",
        ],
        r"its fields are: body",
    ),
    "folder in use": (
        lambda t, k: ["--out", _held(t, k), "--force"],
        rf"is in use by pid {os.getpid()} on host",
    ),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2_nothing_changed(case, tok_dir, tmp_path, capsys):
    setup, pattern = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    argv = [
        "prepare",
        "--tokenizer",
        str(tok_dir),
        "--input",
        "stdlib:max_docs=5",
        "--num-proc",
        "1",
    ] + setup(work, tok_dir)
    before = _digest(tmp_path)
    capsys.readouterr()
    try:
        assert cli(argv) == 2
    finally:
        if getattr(_held, "lock", None):
            _held.lock.release()
            _held.lock = None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cgpt prepare: error: ")
    assert re.search(pattern, err), err
    assert _digest(tmp_path) == before


def test_several_named_inputs_in_one_call(tok_dir, tmp_path, capsys, monkeypatch):
    """--input NAME=SRC (repeated): each into OUT/NAME, progress labelled with the name, one
    tokenizer (so they mix), and a --data line for cgpt plan."""
    from cgpt.train.data.mixture import open_data

    _quick_log_lines(monkeypatch)
    out = tmp_path / "mix"
    argv = ["prepare", "--tokenizer", str(tok_dir), "--out", str(out), "--num-proc", "1"]
    argv += ["--input", "a=stdlib:max_docs=120", "--input", "b=stdlib:max_docs=60"]
    assert cli(argv) == 0
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert any(ln.startswith("prepare a: ") for ln in lines)
    assert any(ln.startswith("prepare b: ") for ln in lines)
    assert all(ln.startswith(("prepare a: ", "prepare b: ")) for ln in lines)
    assert f"-> {out / 'a'}:" in cap.out and f"-> {out / 'b'}:" in cap.out
    assert f"--data a={out / 'a'}:1,b={out / 'b'}:1" in cap.out
    a, b = open_token_data(out / "a"), open_token_data(out / "b")
    assert a.meta["documents"] == 120 and b.meta["documents"] == 60
    mix = open_data({"sources": [{"name": n, "path": str(out / n), "weight": 1} for n in "ab"]})
    assert [s.name for s in mix.sources] == ["a", "b"]


def test_several_inputs_need_names(tok_dir, tmp_path, capsys):
    argv = ["prepare", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o")]
    assert cli(argv + ["--input", "a=stdlib:max_docs=5", "--input", "stdlib"]) == 2
    err = capsys.readouterr().err
    assert "NAME=SRC" in err and "Traceback" not in err and not (tmp_path / "o").exists()
    assert cli(argv + ["--input", "a=stdlib:max_docs=5", "--input", "a=stdlib"]) == 2
    assert "unique" in capsys.readouterr().err
