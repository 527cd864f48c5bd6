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
    meta = write_token_data(tmp_path / "d", train, val, vocab_size=300, eos_id=0,
                            tokenizer_fingerprint="abc", source="unit", tokenizer_dir="/tok")
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
    with pytest.raises(CgptError, match="shard val.bin fails its checksum: it was truncated "
                                        "or edited after prepare; re-run cgpt prepare"):
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
        "train-00000.bin", "train-00001.bin", "train-00002.bin", "train-00003.bin"]
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
    write_token_data(tmp_path / "d", _tokens(100, 300), _tokens(10, 300), 300, 0,
                     tokenizer_fingerprint="f" * 64, tokenizer_dir="/tok")
    td = open_token_data(tmp_path / "d")
    check_vocab(td, 300)
    check_vocab(td, 512, _Tok(300, "f" * 64))  # a padded model vocab is fine
    with pytest.raises(CgptError, match="set model.vocab_size to at least 300"):
        check_vocab(td, 299)
    with pytest.raises(CgptError, match="has vocab 400"):
        check_vocab(td, 512, _Tok(400, "f" * 64))
    with pytest.raises(CgptError, match="not the one that produced the data"):
        check_vocab(td, 512, _Tok(300, "e" * 64))
