"""Token shards: round trip, dtype choice, checksums, atomic writes, vocab checks."""

import json

import numpy as np
import pytest

from cgpt.model.errors import CgptError
from cgpt.train.data import shards
from cgpt.train.data.shards import ShardWriter, check_vocab, open_token_data, write_token_data


def _tokens(n, vocab, seed=0, eos=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(1, vocab, n)
    t[::17] = eos
    return t


def test_round_trip_uint16(tmp_path):
    train, val = _tokens(1000, 300), _tokens(100, 300, seed=1)
    meta = write_token_data(
        tmp_path / "d",
        train,
        val,
        vocab_size=300,
        eos_id=0,
        tokenizer_fingerprint="abc",
        source="unit",
        tokenizer_dir="/tok",
    )
    td = open_token_data(tmp_path / "d")
    assert td.dtype == np.uint16 and td.train.dtype == np.uint16
    np.testing.assert_array_equal(td.train, train)
    np.testing.assert_array_equal(td.val, val)
    assert td.vocab_size == 300 and td.eos_id == 0
    assert td.fingerprint == "abc" and td.tokenizer_dir == "/tok"
    assert td.meta == meta == json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] == 1000
    assert meta["splits"]["train"]["documents"] == int((train == 0).sum())
    f = meta["splits"]["val"]["files"][0]
    assert f["name"] == "val.bin" and f["bytes"] == 200 and len(f["sha256"]) == 64
    assert meta["source"] == "unit" and meta["replacement_chars"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_vocab_beyond_uint16_uses_uint32(tmp_path):
    assert shards.dtype_for_vocab(65536) == np.uint16
    assert shards.dtype_for_vocab(65537) == np.uint32
    train = np.array([70000, 5, 65536, 1], dtype=np.int64)
    write_token_data(tmp_path / "d", train, train, vocab_size=70001, eos_id=1)
    td = open_token_data(tmp_path / "d")
    assert td.train.dtype == np.uint32
    np.testing.assert_array_equal(td.train, train)


def test_out_of_range_token_rejected_and_nothing_written(tmp_path):
    with pytest.raises(CgptError, match="token ids must lie"):
        write_token_data(tmp_path / "d", np.array([1, 2, 300]), np.array([1]), 300, 0)
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_fails_size_check(tmp_path):
    write_token_data(tmp_path / "d", _tokens(1000, 300), _tokens(100, 300), 300, 0)
    p = tmp_path / "d" / "train.bin"
    p.write_bytes(p.read_bytes()[:-2])
    for verify in (True, "size"):
        with pytest.raises(CgptError, match="train.bin .*truncated or edited"):
            open_token_data(tmp_path / "d", verify=verify)


def test_edited_shard_fails_checksum(tmp_path):
    write_token_data(tmp_path / "d", _tokens(1000, 300), _tokens(100, 300), 300, 0)
    p = tmp_path / "d" / "val.bin"
    b = bytearray(p.read_bytes())
    b[10] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(
        CgptError,
        match="shard val.bin fails its checksum: it was truncated "
        "or edited after prepare; re-run cgpt prepare",
    ):
        open_token_data(tmp_path / "d")
    open_token_data(tmp_path / "d", verify="size")  # size-only check cannot see the edit


def test_missing_folder_meta_and_bad_meta(tmp_path):
    with pytest.raises(CgptError, match="not found"):
        open_token_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CgptError, match="no meta.json"):
        open_token_data(tmp_path / "empty")
    write_token_data(tmp_path / "d", _tokens(100, 300), _tokens(10, 300), 300, 0)
    (tmp_path / "d" / "meta.json").write_text("{not json")
    with pytest.raises(CgptError, match="not a valid cgpt meta.json"):
        open_token_data(tmp_path / "d")
    (tmp_path / "d" / "train.bin").unlink()
    (tmp_path / "d" / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CgptError, match="not a valid"):
        open_token_data(tmp_path / "d")


def test_missing_shard_file(tmp_path):
    write_token_data(tmp_path / "d", _tokens(100, 300), _tokens(10, 300), 300, 0)
    (tmp_path / "d" / "train.bin").unlink()
    with pytest.raises(CgptError, match="train.bin is missing"):
        open_token_data(tmp_path / "d")


def test_overwrite_rules(tmp_path):
    d = tmp_path / "d"
    write_token_data(d, _tokens(100, 300), _tokens(10, 300), 300, 0)
    with pytest.raises(CgptError, match="--force"):
        write_token_data(d, _tokens(50, 300), _tokens(10, 300), 300, 0, overwrite=False)
    assert len(open_token_data(d).train) == 100  # untouched
    write_token_data(d, _tokens(50, 300), _tokens(10, 300), 300, 0)
    assert len(open_token_data(d).train) == 50
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CgptError, match="not empty and is not a cgpt data folder"):
        write_token_data(other, _tokens(50, 300), _tokens(10, 300), 300, 0)
    assert (other / "notes.txt").read_text() == "mine"


def test_error_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "d", 300, 0) as w:
            w.write("train", np.arange(10), 1)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_several_shards_concatenate(tmp_path):
    train = _tokens(1000, 300)
    with ShardWriter(tmp_path / "d", 300, 0, shard_tokens=300) as w:
        w.write("train", train[:450], 3)
        w.write("train", train[450:], 4)
        w.write("val", train[:5], 0)
        meta = w.commit(source="unit")
    assert [f["name"] for f in meta["splits"]["train"]["files"]] == [
        "train-00000.bin",
        "train-00001.bin",
        "train-00002.bin",
        "train-00003.bin",
    ]
    assert meta["splits"]["train"]["documents"] == 7
    td = open_token_data(tmp_path / "d")
    assert len(td.train) == 1000
    np.testing.assert_array_equal(td.train[250:950], train[250:950])
    np.testing.assert_array_equal(np.asarray(td.train), train)
    assert td.train[-1] == train[-1] and td.train[299] == train[299]


def test_empty_val_split(tmp_path):
    write_token_data(tmp_path / "d", _tokens(100, 300), np.zeros(0, np.int64), 300, 0)
    td = open_token_data(tmp_path / "d")
    assert len(td.val) == 0 and len(td.train) == 100


class _Tok:
    def __init__(self, vocab_size, fingerprint):
        self.vocab_size, self.fingerprint, self.dir = vocab_size, fingerprint, "/tok"


def test_check_vocab(tmp_path):
    write_token_data(
        tmp_path / "d",
        _tokens(100, 300),
        _tokens(10, 300),
        300,
        0,
        tokenizer_fingerprint="f" * 64,
        tokenizer_dir="/tok",
    )
    td = open_token_data(tmp_path / "d")
    check_vocab(td, 300)
    check_vocab(td, 320, _Tok(300, "f" * 64))  # a padded model vocab is fine
    for wrong in (299, 512):  # smaller, or larger than the padding: the exact fix
        with pytest.raises(CgptError, match="add --set model.vocab_size=300$"):
            check_vocab(td, wrong)
    with pytest.raises(CgptError, match="has vocab 400"):
        check_vocab(td, 320, _Tok(400, "f" * 64))
    with pytest.raises(CgptError, match="not the one that produced the data"):
        check_vocab(td, 320, _Tok(300, "e" * 64))


# ---- meta.json: its own checksum, dtype and vocab consistency --------------------------------
def _edit_meta(folder, edit, keep_checksum=True):
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    if not keep_checksum:
        meta.pop("meta_sha256", None)
    path.write_text(json.dumps(meta, indent=2) + "\n")


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _set_split(split, key, value):
    return lambda m: m["splits"][split].__setitem__(key, value)


META_EDITS = {  # name: (edit, the message for a meta.json without its checksum)
    "dtype uint8": (_set("dtype", "uint8"), r"says dtype 'uint8', which cgpt never writes"),
    "dtype uint32 for uint16 shards": (
        _set("dtype", "uint32"),
        r"dtype uint32 \(4 bytes a token\) but shard train.bin is "
        r"recorded as 2000 bytes for 1000 tokens",
    ),
    "vocab below the largest id": (
        _set("vocab_size", 200),
        r"vocab_size 200 but the train split holds token id 29\d",
    ),
    "vocab too big for uint16": (
        _set("vocab_size", 70000),
        r"vocab_size 70000 with dtype uint16, which cannot hold",
    ),
    "eos outside the vocab": (_set("eos_id", 300), r"eos_id 300, outside its vocab of 300"),
    "split token count": (
        _set_split("val", "tokens", 7),
        r"val split holds 7 tokens but its "
        r"shards hold 100",
    ),
}


@pytest.mark.parametrize("case", list(META_EDITS))
def test_edited_meta_is_refused(case, tmp_path):
    edit, old_style_msg = META_EDITS[case]
    d = tmp_path / "d"
    write_token_data(d, _tokens(1000, 300), _tokens(100, 300, seed=1), 300, 0)
    _edit_meta(d, edit)
    for verify in (True, "size", False):  # meta.json is small: always checked
        with pytest.raises(
            CgptError,
            match=r"meta.json was edited or corrupted after prepare "
            r"\(its content no longer matches its meta_sha256\)"
            r"; re-run `cgpt prepare`",
        ):
            open_token_data(d, verify=verify)
    _edit_meta(d, lambda m: None, keep_checksum=False)  # as an older cgpt wrote it
    with pytest.raises(CgptError, match=old_style_msg) as e:
        open_token_data(d, verify="size")
    assert "\n" not in str(e.value) and "re-run `cgpt prepare`" in str(e.value)


def test_reformatted_meta_keeps_its_checksum(tmp_path):
    d = tmp_path / "d"
    meta = write_token_data(d, _tokens(100, 300), _tokens(10, 300), 300, 0)
    assert meta["meta_sha256"] == shards.meta_checksum(meta)
    assert meta["splits"]["train"]["max_token_id"] == 299
    (d / "meta.json").write_text(json.dumps(meta, indent=None, sort_keys=True))  # same content
    assert open_token_data(d).meta == meta


def test_old_meta_without_new_fields(tmp_path, recwarn):
    """A meta.json from before max_token_id/meta_sha256 loads silently; a vocab smaller than
    its largest id is then found by a scan, but only when verify=True."""
    d = tmp_path / "d"
    write_token_data(d, _tokens(1000, 300), _tokens(100, 300, seed=1), 300, 0)

    def strip(m):
        for s in ("train", "val"):
            m["splits"][s].pop("max_token_id")

    _edit_meta(d, strip, keep_checksum=False)
    td = open_token_data(d)
    assert "meta_sha256" not in td.meta and not recwarn.list
    _edit_meta(d, _set("vocab_size", 250), keep_checksum=False)
    with pytest.raises(
        CgptError,
        match=r"the train split of .* holds token id 29\d but "
        r"meta.json says vocab_size 250",
    ):
        open_token_data(d, verify=True)
    open_token_data(d, verify="size")  # no scan without verify=True


def test_max_id_scan_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_SCAN_TOKENS", 7)
    train = _tokens(1000, 300)
    with ShardWriter(tmp_path / "d", 300, 0, shard_tokens=300) as w:
        w.write("train", train, 3)
        w.write("val", train[:5], 0)
        w.commit()
    td = open_token_data(tmp_path / "d")
    assert shards._max_token_id(td.train) == train.max()
    assert shards._max_token_id(td.val) == train[:5].max()
    assert shards._max_token_id(np.zeros(0, np.uint16)) is None


def test_second_writer_is_refused_while_the_first_writes(tmp_path):
    d = tmp_path / "d"
    write_token_data(d, _tokens(100, 300), _tokens(10, 300), 300, 0)
    with ShardWriter(d, 300, 0, overwrite=True) as first:
        first.write("train", _tokens(50, 300), 1)
        first.write("val", _tokens(5, 300), 1)
        with pytest.raises(CgptError, match=r"prepare output .* is in use by pid \d+ on host"):
            write_token_data(d, _tokens(70, 300), _tokens(10, 300), 300, 0)
        assert len(open_token_data(d).train) == 100  # the old data is still there
        first.commit()
    assert len(open_token_data(d).train) == 50
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or old folders


def test_publish_without_rename_exchange(tmp_path, monkeypatch):
    """Filesystems without RENAME_EXCHANGE: the old folder goes aside, the new one in."""
    monkeypatch.setattr(shards, "_exchange", lambda a, b: False)
    d = tmp_path / "d"
    write_token_data(d, _tokens(100, 300), _tokens(10, 300), 300, 0)
    write_token_data(d, _tokens(60, 300), _tokens(10, 300), 300, 0)
    assert len(open_token_data(d).train) == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_disk_error_is_one_line_and_publishes_nothing(tmp_path, monkeypatch):
    import errno

    d = tmp_path / "d"
    write_token_data(d, _tokens(100, 300), _tokens(10, 300), 300, 0)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.os, "fsync", full)
    with pytest.raises(
        CgptError,
        match=r"cannot write the data for .*: No space left on "
        r"device; nothing was published",
    ) as e:
        write_token_data(d, _tokens(60, 300), _tokens(10, 300), 300, 0)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert len(open_token_data(d).train) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # the temp folder is gone
