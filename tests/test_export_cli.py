"""`cgpt export` / `cgpt import-hf`: happy paths in-process, user errors as real subprocesses
(one line on stderr, exit 2, no traceback, nothing left at OUT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_bit_identical, make_tokenizer, randomize

from cgpt.launch.cli import main
from cgpt.model import GPT, GPTConfig
from cgpt.model.hf import import_hf, to_hf_state_dict
from cgpt.model.io import load_model, save_model

pytest.importorskip("transformers", reason="export verification needs transformers")

CGPT = str(Path(sys.executable).with_name("cgpt"))


def tiny(seed=0, vocab=300) -> GPT:
    cfg = GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=vocab, n_positions=32)
    return randomize(GPT(cfg), seed).eval()


def run_cli(*argv):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [CGPT, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )


def test_export_model_file_then_import_back(tmp_path, capsys):
    model = tiny()
    save_model(model, tmp_path / "m.safetensors")
    tok = make_tokenizer(tmp_path / "tok", vocab_size=280)
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.safetensors"),
                str(tmp_path / "hf"),
                "--tokenizer",
                str(tok),
            ]
        )
        == 0
    )
    assert "verified against transformers" in capsys.readouterr().out
    assert (tmp_path / "hf/tokenizer.json").is_file()
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 0
    assert_bit_identical(model, load_model(tmp_path / "back.safetensors"))
    # an existing OUT is refused and left alone without --force, replaced with it
    before = (tmp_path / "back.safetensors").read_bytes()
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "back.safetensors").read_bytes() == before
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.safetensors"),
                str(tmp_path / "hf"),
                "--dtype",
                "bfloat16",
                "--no-verify",
                "--force",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "hf/config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(os.listdir(tmp_path)) == ["back.safetensors", "hf", "m.safetensors", "tok"]


def test_export_run_folder_final_model_and_tokenizer(tmp_path, capsys):
    """A run folder's final model.safetensors and its tokenizer/ (checkpoints, which hold
    DeepSpeed's files, are covered with real trainer runs in test_export_checkpoint.py)."""
    run = tmp_path / "run"
    save_model(tiny(4), run / "model.safetensors")
    make_tokenizer(run / "tokenizer", vocab_size=280)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert f"model file {run / 'model.safetensors'}" in capsys.readouterr().out
    assert_bit_identical(tiny(4), import_hf(tmp_path / "hf"))
    assert (tmp_path / "hf/tokenizer.json").is_file()
    assert main(["export", str(tmp_path / "hf"), str(tmp_path / "x")]) == 2  # HF folder as SRC
    assert "import-hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _empty_run(tmp_path: Path) -> Path:
    (tmp_path / "run" / "checkpoints" / "tmp-step-4").mkdir(parents=True)  # a save cut short
    return tmp_path / "run"


def _truncated(tmp_path: Path) -> Path:
    save_model(tiny(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-100])
    return tmp_path / "m.safetensors"


def _pickle(tmp_path: Path) -> Path:
    torch.save(tiny().state_dict(), tmp_path / "m.pt")
    return tmp_path / "m.pt"


@pytest.mark.parametrize(
    "make_src,message",
    [
        (lambda p: p / "missing.safetensors", "does not exist"),
        (_truncated, "truncated or corrupt"),
        (_pickle, "pickle checkpoints are not loaded"),
        (_empty_run, "no complete checkpoint"),
    ],
)
def test_export_bad_source_is_one_line_and_leaves_nothing(tmp_path, make_src, message):
    src = make_src(tmp_path)
    before = sorted(os.listdir(tmp_path))
    r = run_cli("export", src, tmp_path / "hf")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgpt export: error:"), r.stderr
    assert message in lines[0], r.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no OUT, no temporary folder


def test_import_foreign_model_is_refused(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    from safetensors.torch import save_file

    save_file(to_hf_state_dict(tiny()), str(folder / "model.safetensors"))
    r = run_cli("import-hf", folder, tmp_path / "out.safetensors")
    assert r.returncode == 2 and "model_type is 'llama'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_sharded_export_loads_in_transformers_and_imports_back(tmp_path, capsys):
    """Above --max-shard-size the weights are split as save_pretrained splits them; the
    export verifies itself through transformers, and import-hf reads the shards back."""
    model = tiny(seed=3)
    save_model(model, tmp_path / "m.safetensors")
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.safetensors"),
                str(tmp_path / "hf"),
                "--max-shard-size",
                "20KB",
            ]
        )
        == 0
    )
    assert "verified against transformers" in capsys.readouterr().out
    files = sorted(os.listdir(tmp_path / "hf"))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2 and "model.safetensors" not in files
    index = json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    from safetensors import safe_open

    total = 0
    for f in shards:
        with safe_open(tmp_path / "hf" / f, "pt") as sf:
            tensors = [sf.get_tensor(k) for k in sf.keys()]
        data = sum(t.numel() * t.element_size() for t in tensors)
        total += data
        assert data <= 20_000 or len(tensors) == 1  # only a tensor above the limit stands alone
    assert index["metadata"]["total_size"] == total
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 0
    assert_bit_identical(model, load_model(tmp_path / "back.safetensors"))
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.safetensors"),
                str(tmp_path / "bad"),
                "--max-shard-size",
                "5 gigs",
            ]
        )
        == 2
    )
    assert "max shard size" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_safetensors_header_length_starting_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import save_file

    from cgpt.model.io import read_safetensors

    for n in range(1, 200):  # grow a metadata value until the header length is 0x80 mod 256
        p = tmp_path / "t.safetensors"
        save_file({"w": torch.zeros(2)}, p, metadata={"k": "x" * n})
        if p.read_bytes()[0] == 0x80:
            break
    assert p.read_bytes()[0] == 0x80
    tensors, meta = read_safetensors(p)
    assert meta["k"] == "x" * n and torch.equal(tensors["w"], torch.zeros(2))
