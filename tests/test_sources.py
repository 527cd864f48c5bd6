"""Document sources: stdlib default, local txt/jsonl/json/parquet, Hub offline, bad input."""

import json
import sysconfig
import time
from pathlib import Path

import pytest

from cgpt.model.errors import CgptError
from cgpt.train.data.sources import iter_documents, open_source, stdlib_files


def test_stdlib_default_is_the_python_source_tree():
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 300 and files == sorted(files)
    assert all(f.suffix == ".py" and root in f.parents for f in files)
    assert not any({"site-packages", "test"} & set(f.relative_to(root).parts) for f in files)
    docs = list(iter_documents("stdlib:max_docs=5"))
    nonempty = [f.read_text() for f in files if f.stat().st_size][:5]
    assert docs == nonempty
    assert list(iter_documents("stdlib", max_docs=3)) == nonempty[:3]
    assert list(iter_documents(max_docs=2)) == nonempty[:2]  # stdlib is the default


def test_text_files_are_one_document_each_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second\nfile\n\n  indented\n")
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "sub" / "c.md").write_text("# third\n")
    (tmp_path / "ignored.py").write_text("x = 1\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("hidden\n")
    src = open_source(str(tmp_path))
    assert list(src) == ["first line\nsecond line\n", "second\nfile\n\n  indented\n", "# third\n"]
    assert src.stats.documents == 3 and "3 files" in src.description
    assert list(iter_documents(str(tmp_path / "*.txt"))) == list(src)[:2]
    assert list(iter_documents(str(tmp_path / "b.txt"))) == ["second\nfile\n\n  indented\n"]


def test_jsonl_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "alpha", "id": 1}, {"text": None, "id": 2}, {"text": "gamma", "id": 3}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps([{"text": "delta"}, {"text": ""}]))
    pq.write_table(pa.table({"body": ["eps", "zeta"], "n": [1, 2]}), tmp_path / "c.parquet")
    src = open_source(str(tmp_path / "a.jsonl"))
    assert list(src) == ["alpha", "gamma"] and src.stats.empty_documents == 1
    assert list(iter_documents(str(tmp_path / "b.json"))) == ["delta"]
    assert list(iter_documents(str(tmp_path / "c.parquet"), text_field="body")) == ["eps", "zeta"]


def test_missing_text_field_names_the_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x", "meta": 1}\n')
    with pytest.raises(CgptError, match="no field 'text'; its fields are: body, meta"):
        list(iter_documents(str(tmp_path / "a.jsonl")))
    with pytest.raises(CgptError, match="is a int, not text"):
        list(iter_documents(str(tmp_path / "a.jsonl"), text_field="meta"))


def test_non_utf8_text_is_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 ok \xff\xfe end\n")  # latin-1 + junk
    (tmp_path / "b.txt").write_bytes("fine ü\n".encode())
    src = open_source(str(tmp_path))
    docs = list(src)
    assert docs == ["caf\ufffd ok \ufffd\ufffd end\n", "fine ü\n"]
    assert src.stats.replacement_chars == 3


def test_non_utf8_jsonl_fails_with_a_message(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(CgptError, match="a.jsonl.*valid UTF-8"):
        list(iter_documents(str(tmp_path / "a.jsonl")))


def test_stdlib_with_its_test_suites():
    root = Path(sysconfig.get_paths()["stdlib"])
    plain, more = stdlib_files(), stdlib_files(tests=True)
    assert set(plain) < set(more) and more == sorted(more)
    extra = set(more) - set(plain)
    assert all({"test", "tests", "idle_test"} & set(f.relative_to(root).parts) for f in extra)
    assert not any("site-packages" in f.relative_to(root).parts for f in more)
    src = open_source("stdlib:tests=1,max_docs=3")
    assert "test suites included" in src.description and src.max_docs == 3
    assert "test suites" not in open_source("stdlib:tests=0").description
    with pytest.raises(CgptError, match="tests must be 0 or 1"):
        open_source("stdlib:tests=yes")


def test_missing_paths(tmp_path):
    with pytest.raises(CgptError, match="not found: give a file, a folder, a glob"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(CgptError, match="matches no files"):
        open_source(str(tmp_path / "*.txt"))
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(CgptError, match=r"holds no \.txt.*found: \.bin"):
        open_source(str(tmp_path))
    with pytest.raises(CgptError, match="unknown option"):
        open_source("stdlib:max=3")


def test_hub_offline_fails_fast_and_suggests_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = open_source("hf:wikitext:wikitext-2-raw-v1")
    assert src.description.startswith("hf:wikitext:wikitext-2-raw-v1 split=train")
    t0 = time.perf_counter()
    with pytest.raises(CgptError, match="offline.*use local files"):
        next(iter(src))
    assert time.perf_counter() - t0 < 5
    with pytest.raises(CgptError, match="expected hf:NAME"):
        open_source("hf:")


def test_progress_total(tmp_path):
    """What prepare's progress bar counts up to: bytes when documents are whole files, rows
    with JSON/parquet in the mix, a document count under a cap, nothing when the source
    cannot say."""
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "b.md").write_text("world!!\n")
    assert open_source(str(tmp_path)).progress_total() == (14, "B")
    assert open_source(str(tmp_path), max_docs=5).progress_total() == (2, " docs")
    assert open_source("stdlib").progress_total() == (
        sum(f.stat().st_size for f in stdlib_files()),
        "B",
    )
    assert open_source("stdlib:max_docs=7").progress_total() == (7, " docs")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert open_source(str(tmp_path)).progress_total() == (3, " rows")  # 1 line + 2 files
    assert open_source(str(tmp_path), max_docs=9).progress_total() == (3, " docs")
    assert open_source("hf:some/set").progress_total() is None
    assert open_source("hf:some/set", max_docs=4).progress_total() == (4, " docs")
