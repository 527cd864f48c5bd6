"""Tokenizers: sentencepiece BPE training, its Hugging Face twin, and HF tokenizer folders."""

import json

import pytest

from cgpt.model.errors import CgptError
from cgpt.train.data.sources import iter_documents
from cgpt.train.data.tokenizer import (
    EOS,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_tokenizer,
)

SAMPLES = [
    "def f(x):\n    return  x  # two spaces\n\n\n\tindented with a tab\n",
    "class A:\n        def m(self):\n                pass\n" + " " * 17 + "trailing\n",
    "ünïcødé — naïve café, 日本語のテキスト, Ελληνικά, русский, emoji 🤖🚀 and ZWJ 👩‍💻",
    "numbers 1234567890 3.14159 1e-10 0xFF, math ∑∫√∞ ≠ ≤ ≥",
    "  leading spaces, trailing spaces   ",
    "\n\n\r\n\t \t mixed\x0bcontrol\x00chars\x7f",
    "a" * 50 + " " * 50 + "\n" * 20,
    "",
    " ",
    "x",
]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "sp"
    train_tokenizer("stdlib:max_docs=60", 600, out, seed=0)
    return out


def test_trained_folder_layout(sp_dir):
    names = {p.name for p in sp_dir.iterdir()}
    assert {
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "cgpt_tokenizer.json",
    } <= names
    tok = load_tokenizer(sp_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 600 and tok.sp.id_to_piece(tok.eos_id) == EOS
    assert len(tok.fingerprint) == 64 and tok.dir == str(sp_dir)
    assert json.loads((sp_dir / "cgpt_tokenizer.json").read_text())["documents"] == 60


@pytest.mark.parametrize("text", SAMPLES)
def test_sentencepiece_round_trip_is_lossless(sp_dir, text):
    tok = load_tokenizer(sp_dir)
    assert tok.decode(tok.encode(text)) == text


def test_whitespace_is_not_collapsed(sp_dir):
    tok = load_tokenizer(sp_dir)
    assert tok.encode("a  b") != tok.encode("a b")
    assert tok.encode("x\n\n") != tok.encode("x\n")


def test_autotokenizer_encodes_exactly_like_sentencepiece(sp_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(sp_dir))
    tok = load_tokenizer(sp_dir)
    texts = SAMPLES + [EOS + " literal end token in text"]
    texts += [d[:3000] for d in iter_documents("stdlib", max_docs=80)][60:]  # unseen code
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text[:80]
        assert hf(text)["input_ids"] == ids  # nothing added around the text either
        assert hf.decode(ids) == text
    assert hf.eos_token == EOS and hf.convert_tokens_to_ids(EOS) == tok.eos_id


def test_training_is_deterministic(sp_dir, tmp_path):
    again = train_tokenizer("stdlib:max_docs=60", 600, tmp_path / "again", seed=0)
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (tmp_path / "again" / name).read_bytes() == (sp_dir / name).read_bytes()
    assert again.fingerprint == load_tokenizer(sp_dir).fingerprint


def test_pickles_for_worker_processes(sp_dir):
    import pickle

    tok = pickle.loads(pickle.dumps(load_tokenizer(sp_dir)))
    assert tok.encode("hello world") == load_tokenizer(sp_dir).encode("hello world")
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_bad_requests(tmp_path, sp_dir):
    with pytest.raises(CgptError, match="too small"):
        train_tokenizer("stdlib:max_docs=2", 100, tmp_path / "t")
    with pytest.raises(CgptError, match="already exists and is not empty"):
        train_tokenizer("stdlib:max_docs=2", 600, sp_dir)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(CgptError, match="no documents"):
        train_tokenizer(str(tmp_path / "empty"), 600, tmp_path / "t")
    with pytest.raises(CgptError, match="too small for a vocab of 50000"):
        train_tokenizer("stdlib:max_docs=2", 50000, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temp folders left
    with pytest.raises(CgptError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(CgptError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "empty")


# ---- an existing Hugging Face tokenizer (a small GPT-2-style byte-level BPE) -----------
@pytest.fixture(scope="module")
def bytelevel_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(iter_documents("stdlib", max_docs=30), trainer)
    out = tmp_path_factory.mktemp("gpt2ish")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2TokenizerFast", "eos_token": EOS})
    )
    tok.model.save(str(out))  # vocab.json + merges.txt, GPT-2's original layout
    return out


def test_hf_tokenizer_folder(bytelevel_dir):
    tok = load_tokenizer(bytelevel_dir)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 400 and tok.eos_id == tok.tok.token_to_id(EOS)
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(bytelevel_dir))
    assert hf.encode(SAMPLES[0], add_special_tokens=False) == tok.encode(SAMPLES[0])


def test_gpt2_vocab_and_merges_layout(bytelevel_dir, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((bytelevel_dir / name).read_bytes())
    tok = load_tokenizer(tmp_path)
    ref = load_tokenizer(bytelevel_dir)
    for text in SAMPLES[:4]:
        assert tok.encode(text) == ref.encode(text)
    assert tok.eos_id == ref.eos_id
    assert tok.fingerprint != ref.fingerprint  # fingerprints are of the defining files


def test_hf_folder_without_eos(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "tokenizer.json")
    )
    with pytest.raises(CgptError, match="no end-of-text token"):
        load_tokenizer(tmp_path)


# ---- sentencepiece's vocab errors, each with the right advice -------------------------------
SP_BAD = {  # name: (argv tail, pattern of the one stderr line)
    "vocab too small for the characters": (
        ["--input", "stdlib:max_docs=2", "--vocab-size", "300"],
        r"a vocab of 300 is too small for the characters of the corpus \(2 documents\).* need "
        r"(\d+); raise --vocab-size to at least \1, or lower --character-coverage",
    ),
    "vocab too large for the corpus": (
        ["--input", "stdlib:max_docs=2", "--vocab-size", "50000"],
        r"the corpus \(2 documents\) is too small for a vocab of 50000: it yields at most "
        r"(\d+) pieces; lower --vocab-size to at most \1, or give more text",
    ),
    "below the byte pieces": (
        ["--input", "stdlib:max_docs=2", "--vocab-size", "100"],
        r"vocab size 100 is too small.*use at least 260",
    ),
}


@pytest.mark.parametrize("case", list(SP_BAD))
def test_vocab_errors_give_the_right_advice(case, tmp_path, capsys):
    import re

    from cgpt.launch.cli import main as cli

    tail, pattern = SP_BAD[case]
    assert cli(["tokenizer", "train", "--out", str(tmp_path / "t"), *tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    m = re.search(pattern, err)
    assert m, err
    assert list(tmp_path.iterdir()) == []  # no output, no temp folder
    if m.groups():  # the advised number really works: the advice points the right way
        n = int(m.group(1))
        train_tokenizer("stdlib:max_docs=2", n, tmp_path / "ok")
        assert load_tokenizer(tmp_path / "ok").vocab_size == n


def test_export_of_our_tokenizer_follows_n_positions(sp_dir, tmp_path):
    """The twin is written with model_max_length 2048; an export says the model's context,
    and its bos_token is the token config.json's bos_token_id names."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from cgpt.model import GPT, GPTConfig
    from cgpt.model.hf import export_hf

    model = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=600, n_positions=64))
    out = export_hf(model, tmp_path / "hf", tokenizer_dir=sp_dir)
    cfg = json.loads((out / "config.json").read_text())
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.model_max_length == 64
    assert hf.eos_token_id == cfg["eos_token_id"] == load_tokenizer(sp_dir).eos_id
    assert hf.bos_token_id == cfg["bos_token_id"]
    assert json.loads((sp_dir / "tokenizer_config.json").read_text())["model_max_length"] == 2048
