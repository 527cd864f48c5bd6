"""cgpt prepare: round trip, counts, determinism, uint32 vocabs, bad input, the CLI verbs."""

import json

import numpy as np
import pytest

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError
from cgpt.train.data.prepare import prepare, val_mask
from cgpt.train.data.shards import open_token_data
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
    for split, want in (("train", [d for d, m in zip(docs, mask) if not m]),
                        ("val", [d for d, m in zip(docs, mask) if m])):
        got = _split_docs(data.split(split), tok.eos_id)
        assert [tok.decode(g) for g in got] == want
        assert meta["splits"][split]["tokens"] == sum(len(tok.encode(d)) + 1 for d in want)
        assert meta["splits"][split]["documents"] == len(want)
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
    meta = prepare(str(tmp_path / "in"), tok_dir, tmp_path / "d", val_fraction=0)
    assert meta["replacement_chars"] == 1 and meta["splits"]["val"]["tokens"] == 0


def test_vocab_beyond_uint16_writes_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70000)}
    vocab.update({"[UNK]": 70000, "<|endoftext|>": 70001})
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    t.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "a.txt").write_text("w1 w69999 w65536 nope")
    meta = prepare(str(tmp_path / "a.txt"), tmp_path / "tok", tmp_path / "d", val_fraction=0)
    data = open_token_data(tmp_path / "d")
    assert meta["dtype"] == "uint32"
    assert data.train.tolist() == [1, 69999, 65536, 70000, 70001]


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
    assert cli(["tokenizer", "train", "--input", "stdlib:max_docs=20", "--vocab-size", "400",
                "--out", tok]) == 0
    assert cli(["prepare", "--input", "stdlib:max_docs=20", "--tokenizer", tok, "--out", data,
                "--val-fraction", "0.1", "--num-proc", "1"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    assert open_token_data(data).meta["documents"] == 20
    assert cli(["prepare", "--input", str(tmp_path / "missing"), "--tokenizer", tok,
                "--out", str(tmp_path / "d2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cgpt prepare: error: input") and "Traceback" not in err
    assert cli(["prepare", "--input", "stdlib:max_docs=2", "--tokenizer", tok, "--out", data,
                "--val-fraction", "1.5"]) == 2
    assert cli(["tokenizer", "train", "--vocab-size", "400", "--out", tok]) == 2
    assert "--force" in capsys.readouterr().err
