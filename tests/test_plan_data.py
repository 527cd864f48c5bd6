"""`cgpt plan --data`: the data decides the vocabulary (issue 23 item 1), continued pretraining
on data of another tokenizer advises the prepare that fixes it (item 5), a plan the data
cannot train fails at plan time (item 6), and every written path is absolute (item 7).

The data folders are made by `cgpt prepare` (cgpt.train.data.prepare) with small byte-level
BPE tokenizers built here (tests/helpers.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import gpt2_config, make_bpe, make_tokenizer

from cgpt.launch.cli import main
from cgpt.model.errors import CgptError
from cgpt.train.config import load_run_config
from cgpt.train.data.mixture import open_data
from cgpt.train.data.prepare import prepare
from cgpt.train.data.shards import open_token_data

TINY = ["--layers", "2", "--width", "64", "--seq-len", "64", "--batch-seqs", "8"]


def _corpus(path: Path, docs: int = 400) -> Path:
    lines = (
        json.dumps({"text": f"document {i}: the quick brown fox jumps over the lazy dog " * 3})
        for i in range(docs)
    )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two tokenizers, a corpus, and folders prepared with each (mixture: a and b)."""
    root = tmp_path_factory.mktemp("plan-data")
    corpus = _corpus(root / "corpus.jsonl")
    tok = make_tokenizer(root / "tok", vocab_size=300)
    for name in ("a", "b"):
        prepare(str(corpus), tok, root / name, val_fraction=0.05, num_proc=1)
    other = make_bpe(root / "other-tok", "json", vocab_size=400)
    prepare(str(corpus), other, root / "other", val_fraction=0.05, num_proc=1)
    return root


def _plan_json(argv, capsys) -> dict:
    assert main(["plan", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _error(argv, capsys) -> str:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- item 1: the data decides the vocabulary ------------------------------------------------
def test_plan_takes_the_vocab_of_the_data(tree, capsys):
    vocab = open_token_data(tree / "a").vocab_size
    assert vocab != 50257
    argv = ["--params", "5M", "--seq-len", "128", "--batch-seqs", "64"]
    d = _plan_json([*argv, "--data", str(tree / "a")], capsys)
    assert d["vocab_size"] == vocab  # cc73e43: 50257 for any data
    mix = f"a={tree / 'a'}:0.7,b={tree / 'b'}:0.3"
    assert _plan_json([*TINY, "--data", mix], capsys)["vocab_size"] == vocab
    padded = -(-vocab // 64) * 64
    assert (
        _plan_json([*TINY, "--data", str(tree / "a"), "--vocab-size", str(padded)], capsys)[
            "vocab_size"
        ]
        == padded
    )
    err = _error([*TINY, "--data", str(tree / "a"), "--vocab-size", "50257"], capsys)
    assert "--vocab-size 50257 contradicts the data" in err and f"vocab {vocab}" in err
    err = _error([*TINY, "--data", f"a={tree / 'a'}:1,o={tree / 'other'}:1"], capsys)
    assert "different tokenizers" in err
    err = _error(["111M", "--data", str(tree / "a")], capsys)
    assert "add --rules" in err and str(vocab) in err


def test_train_refuses_another_vocab_with_the_set_that_fixes_it(tree, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    assert main(["plan", *TINY, "--data", str(tree / "a"), "--write", str(run)]) == 0
    capsys.readouterr()
    d = yaml.safe_load(run.read_text())
    d["model"]["vocab_size"] = 50257  # a hand-edited (or old) config
    run.write_text(yaml.safe_dump(d))
    with pytest.raises(CgptError) as e:
        cfg = load_run_config(run)
        open_data(cfg.data, cfg.model.vocab_size)  # what `cgpt train` opens its data with
    fix = re.search(r"add --set (\S+)$", str(e.value))
    assert fix, str(e.value)
    cfg = load_run_config(run, [fix.group(1)])  # followed literally
    assert open_data(cfg.data, cfg.model.vocab_size).sources[0].data.vocab_size == (
        cfg.model.vocab_size
    )
    # a mixture: every source is checked, with the same fix
    mix = f"a={tree / 'a'}:1,b={tree / 'b'}:1"
    assert main(["plan", *TINY, "--data", mix, "--write", str(run)]) == 0
    capsys.readouterr()
    with pytest.raises(CgptError, match=re.escape(f"add --set {fix.group(1)}") + "$"):
        cfg = load_run_config(run, ["model.vocab_size=50304"])  # GPT-2's padded vocab
        open_data(cfg.data, cfg.model.vocab_size)


# ---- item 5: continued pretraining on data of another tokenizer -----------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A GPT-2-architecture HF folder as `hf download` gives it (random weights), whose
    tokenizer is not the one `tree`'s folder "a" was prepared with."""
    from transformers import GPT2LMHeadModel

    from cgpt.train.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("src") / "tiny-gpt"
    vocab = load_tokenizer(make_bpe(folder, "vocab", vocab_size=400)).vocab_size
    cfg = gpt2_config(
        n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab, eos_token_id=0
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def test_init_from_with_another_tokenizer_advises_the_prepare_that_fixes_it(
    tree, source, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tree)  # the corpus is recorded as typed (relative to here)
    argv = ["--init-from", str(source), "--tokens", "1M"]
    err = _error([*argv, "--data", str(tree / "a")], capsys)
    assert "set model.vocab_size" not in err  # cc73e43's loop
    command = err[err.index("cgpt prepare") :]
    assert main(shlex.split(command)[1:]) == 0  # followed literally
    capsys.readouterr()
    fixed = command.split("--out ")[1].split()[0]
    run = tmp_path / "cpt.yaml"
    assert main(["plan", *argv, "--data", fixed, "--write", str(run)]) == 0
    cfg = load_run_config(run)
    from cgpt.train.loop.init_from import check_data_vocab

    check_data_vocab(cfg)  # the trainer's check before it opens the data
    cfg.data.path = str(tree / "a")  # the same refusal at train time, the same advice
    with pytest.raises(CgptError, match=re.escape(command)):
        check_data_vocab(cfg)


def test_same_vocab_size_but_another_tokenizer_is_refused_at_plan_time(
    tree, source, tmp_path, capsys, monkeypatch
):
    """A BPE of the source's size trained on other text: ids mean other words."""
    from helpers import EOS, byte_bpe
    from transformers import PreTrainedTokenizerFast

    from cgpt.train.data.tokenizer import load_tokenizer

    vocab = load_tokenizer(source).vocab_size
    texts = (tree / "corpus.jsonl").read_text().splitlines() * 3
    tok = byte_bpe(texts, vocab)
    folder = tmp_path / "same-size"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(folder)
    assert load_tokenizer(folder).vocab_size == vocab
    monkeypatch.chdir(tree)
    data = tmp_path / "same-size-data"
    prepare("corpus.jsonl", folder, data, val_fraction=0.05, num_proc=1)
    argv = ["--init-from", str(source), "--tokens", "1M"]
    err = _error([*argv, "--data", str(data)], capsys)  # cc73e43: planned and written
    command = err[err.index("cgpt prepare") :]
    assert main(shlex.split(command)[1:]) == 0  # followed literally
    capsys.readouterr()
    fixed = command.split("--out ")[1].split()[0]
    assert main(["plan", *argv, "--data", fixed]) == 0


# ---- item 6: fail at plan time, nothing written ----------------------------------------------
def test_plan_refuses_data_it_cannot_train_and_writes_nothing(tree, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    val = len(open_token_data(tree / "a").val)
    cases = [
        (["--data", str(tmp_path / "missing")], "not found"),
        (["--seq-len", str(val), "--data", str(tree / "a")], "fewer than one window"),
        (["--seq-len", "64", "--batch-seqs", "1000", "--data", str(tree / "a")], "one step"),
    ]
    assert len(open_token_data(tree / "a").train) < 1000 * 64
    for extra, msg in cases:
        err = _error(["--layers", "4", "--width", "256", *extra, "--write", str(run)], capsys)
        assert msg in err and not run.exists()
    err = _error([*TINY, "--write", str(run)], capsys)
    assert "--write needs --data" in err and not run.exists()


# ---- item 7: paths mean the same everywhere ------------------------------------------------
def test_written_paths_are_absolute_and_work_from_elsewhere(
    tree, source, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tree)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    one, mix = tmp_path / "one.yaml", tmp_path / "mix.yaml"
    assert main(["plan", *TINY, "--data", "a", "--tokenizer", "tok", "--write", str(one)]) == 0
    assert main(["plan", *TINY, "--data", "a=a:1,b=b:1", "--write", str(mix)]) == 0
    d1, d2 = (yaml.safe_load(p.read_text()) for p in (one, mix))
    assert d1["data"]["path"] == str(tree / "a")  # cc73e43: "a", as typed
    assert d1["data"]["tokenizer"] == str(tree / "tok")
    assert [s["path"] for s in d2["data"]["sources"]] == [str(tree / "a"), str(tree / "b")]
    cpt = tmp_path / "cpt.yaml"
    argv = ["plan", "--init-from", os.path.relpath(source), "--tokens", "1M", "--data", "other"]
    assert main([*argv, "--write", str(cpt)]) == 0
    d3 = yaml.safe_load(cpt.read_text())
    assert d3["init"]["source"] == str(source)  # cc73e43: as typed
    for d in (d1, d2, d3):
        assert os.path.isabs(d["runtime"]["out_dir"])
    monkeypatch.chdir(elsewhere)
    for p in (one, mix, cpt):
        cfg = load_run_config(p)
        open_data(cfg.data, cfg.model.vocab_size)  # the same folders from another directory
