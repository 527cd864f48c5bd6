"""HF conversion: logits parity with transformers both ways, bit-identical round trips,
tokenizer export, model files, and refusal of bad/foreign/unsafe input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import assert_bit_identical, gpt2_config, make_bpe, make_tokenizer, randomize
from torch.testing import assert_close

from cgpt.model import GPT, CgptError, GPTConfig
from cgpt.model import hf as H
from cgpt.model.io import build_from_state_dict, load_model, save_model

transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

# (n_layer, n_embd, n_head): square heads, an odd head count (17), d_head 80
SHAPES = [(2, 32, 4), (1, 68, 17), (2, 160, 2)]
VOCAB, CTX = 97, 48


def tiny_gpt(shape=(2, 32, 4), seed=0, **kw) -> GPT:
    L, d, h = shape
    return randomize(
        GPT(GPTConfig(n_layer=L, n_embd=d, n_head=h, vocab_size=VOCAB, n_positions=CTX, **kw)), seed
    ).eval()


def ids(batch=2, T=CTX, seed=1):
    return torch.randint(VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def hf_model_for(cfg: GPTConfig) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(**H.gpt_config_to_hf(cfg))).eval()


@pytest.mark.parametrize("shape", SHAPES)
def test_parity_ours_to_transformers(shape):
    ours = tiny_gpt(shape)
    hf = hf_model_for(ours.config)
    res = hf.load_state_dict(H.to_hf_state_dict(ours), strict=False)
    assert res.missing_keys == ["lm_head.weight"] and not res.unexpected_keys  # tied: stored once
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    x = ids()
    with torch.no_grad():
        assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_parity_transformers_to_ours(shape):
    L, d, h = shape
    hf_cfg = gpt2_config(n_layer=L, n_embd=d, n_head=h, vocab_size=VOCAB, n_positions=CTX)
    hf = randomize(GPT2LMHeadModel(hf_cfg), seed=3).eval()
    cfg, tied = H.hf_config_to_gpt(hf.config.to_dict())
    sd, tied = H.from_hf_state_dict(hf.state_dict(), cfg, tied)
    ours = build_from_state_dict(cfg, sd, tied, "test").eval()
    x = ids(seed=2)
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, atol=1e-5, rtol=1e-5)


def test_import_of_transformers_save_pretrained(tmp_path):
    hf_cfg = gpt2_config(n_layer=2, n_embd=68, n_head=17, vocab_size=VOCAB, n_positions=CTX)
    hf = randomize(GPT2LMHeadModel(hf_cfg), seed=4).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = H.import_hf(tmp_path / "hf", verify=True).eval()
    assert ours.lm_head.weight is ours.transformer.wte.weight
    x = ids(seed=5)
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, atol=1e-5, rtol=1e-5)


def test_export_loads_in_transformers_and_round_trips_bit_identical(tmp_path):
    ours = tiny_gpt((1, 68, 17))
    out = H.export_hf(ours, tmp_path / "hf")
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary folder left beside it
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu" and cfg["tie_word_embeddings"] is True
    assert cfg["resid_pdrop"] == cfg["embd_pdrop"] == cfg["attn_pdrop"] == 0.0
    assert (cfg["n_head"], cfg["n_inner"], cfg["eos_token_id"]) == (17, 4 * 68, VOCAB - 1)
    assert AutoConfig.from_pretrained(out).model_type == "gpt2"
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = ids(seed=6)
    with torch.no_grad():
        assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=1e-5)
    assert_bit_identical(ours, H.import_hf(out))


def test_bf16_export_keeps_dtype_and_round_trips(tmp_path):
    ours = tiny_gpt().to(torch.bfloat16)
    H.export_hf(ours, tmp_path / "hf")  # verified in fp32 inside; the model must stay bf16
    assert next(ours.parameters()).dtype == torch.bfloat16
    assert json.loads((tmp_path / "hf/config.json").read_text())["dtype"] == "bfloat16"
    assert_bit_identical(ours, H.import_hf(tmp_path / "hf"))


def test_untied_head_exports_and_imports(tmp_path):
    ours = tiny_gpt()
    ours.lm_head.weight = torch.nn.Parameter(ours.transformer.wte.weight.detach() * -0.5)
    out = H.export_hf(ours, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    back = H.import_hf(out, verify=True)
    assert back.lm_head.weight is not back.transformer.wte.weight
    assert_bit_identical(ours, back)
    save_model(back, tmp_path / "m.safetensors")
    assert_bit_identical(ours, load_model(tmp_path / "m.safetensors"))


def test_verification_catches_a_wrong_key_map(tmp_path, monkeypatch):
    # attn.c_proj is square: without its transpose every shape still fits, only logits differ
    table = dict(H._OURS)
    table["transformer.h.{i}.attn.c_proj.weight"] = ("transformer.h.{i}.attn.c_proj.weight", False)
    monkeypatch.setattr(H, "_OURS", table)
    with pytest.raises(CgptError, match="logits differ"):
        H.export_hf(tiny_gpt(), tmp_path / "hf")
    assert os.listdir(tmp_path) == []  # neither OUT nor a temporary folder


def test_export_with_tokenizer_round_trips_text(tmp_path):
    tok_dir = make_tokenizer(tmp_path / "tok", vocab_size=300)
    ours = tiny_gpt(shape=(1, 32, 4))
    big = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=320, n_positions=CTX))
    with pytest.raises(CgptError, match="wrong tokenizer"):
        H.export_hf(ours, tmp_path / "small", tokenizer_dir=tok_dir)  # 300 tokens > vocab 97
    assert not (tmp_path / "small").exists()
    out = H.export_hf(big, tmp_path / "hf", tokenizer_dir=tok_dir)
    tok = AutoTokenizer.from_pretrained(out)
    text = "hello world, the round trip ✓ 42"
    assert tok.decode(tok(text)["input_ids"]) == text
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == gen["eos_token_id"] == tok.eos_token_id == 0


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf/keep.txt").write_text("mine")
    with pytest.raises(CgptError, match="already exists"):
        H.export_hf(tiny_gpt(), tmp_path / "hf", verify=False)
    assert (tmp_path / "hf/keep.txt").read_text() == "mine"
    H.export_hf(tiny_gpt(), tmp_path / "hf", verify=False, force=True)
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    assert not (tmp_path / "hf/keep.txt").exists() and (tmp_path / "hf/model.safetensors").is_file()


def test_model_file_round_trip(tmp_path):
    ours = tiny_gpt((1, 68, 17))
    path = save_model(ours, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied weight stored once
        assert json.loads(f.metadata()["config"])["n_head"] == 17
    back = load_model(path)
    assert back.lm_head.weight is back.transformer.wte.weight
    assert_bit_identical(ours, back)


def test_import_handles_old_checkpoint_layout(tmp_path):
    """GPT2Model-style keys (no 'transformer.' prefix), mask buffers, a stored tied head."""
    from safetensors.torch import save_file

    ours = tiny_gpt()
    hf_sd = H.to_hf_state_dict(ours)
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    for i in range(ours.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, CTX, CTX))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(H.gpt_config_to_hf(ours.config)))
    assert_bit_identical(ours, H.import_hf(folder))


def write_hf_folder(folder: Path, model: GPT, **cfg_overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(H.to_hf_state_dict(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({**H.gpt_config_to_hf(model.config), **cfg_overrides})
    )
    return folder


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"model_type": "llama"}, "model_type is 'llama'"),
        ({"activation_function": "gelu_new"}, "gelu_new"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"n_embd": 64, "n_inner": 256}, "has shape"),
        ({"n_layer": 3}, "missing 12 tensor"),
        ({"n_head": 5}, "divisible"),
    ],
)
def test_import_refuses_foreign_or_mismatched_config(tmp_path, overrides, match):
    folder = write_hf_folder(tmp_path / "hf", tiny_gpt(), **overrides)
    with pytest.raises(CgptError, match=match):
        H.import_hf(folder)


def test_import_refuses_truncated_and_missing(tmp_path):
    folder = write_hf_folder(tmp_path / "hf", tiny_gpt())
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CgptError, match="truncated or corrupt"):
        H.import_hf(folder)
    with pytest.raises(CgptError, match="does not exist"):
        H.import_hf(tmp_path / "nope")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CgptError, match="no model.safetensors"):
        H.import_hf(folder)


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (os.environ["CGPT_EVIL_MARK"],))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on our test pickle
def test_pickles_never_run_code(tmp_path, monkeypatch):
    """A code-running pickle is refused; a plain tensor pytorch_model.bin is read safely."""
    import pickle

    mark = tmp_path / "pwned"
    monkeypatch.setenv("CGPT_EVIL_MARK", str(mark))
    ours = tiny_gpt()
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(H.gpt_config_to_hf(ours.config)))
    torch.save(H.to_hf_state_dict(ours), folder / "pytorch_model.bin")
    assert_bit_identical(ours, H.import_hf(folder))  # weights_only=True reads plain tensors
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CgptError, match="refused"):
        H.import_hf(folder)
    torch.save({"x": _Evil()}, tmp_path / "m.safetensors")  # a pickle under a safetensors name
    with pytest.raises(CgptError, match="pickle checkpoints are not loaded"):
        load_model(tmp_path / "m.safetensors")
    assert not mark.exists()


def test_load_model_refuses_hf_weights_file(tmp_path):
    folder = write_hf_folder(tmp_path / "hf", tiny_gpt())
    with pytest.raises(CgptError, match="not a cgpt model file"):
        load_model(folder / "model.safetensors")


def test_mup_export_folds_or_says_why(tmp_path):
    cfg = dict(mup={"base_width": 16})
    ours = tiny_gpt((2, 32, 4), **cfg)
    try:
        import cgpt.model.mup_export  # noqa: F401
    except ImportError:
        with pytest.raises(CgptError, match="mup_export"):
            H.export_hf(ours, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
        return
    out = H.export_hf(ours, tmp_path / "hf")  # verified against ours (with its multipliers)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = ids(seed=7)
    with torch.no_grad():
        assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-4)


# ---- minimal GPT-2 tokenizer folders: one source of truth for bos/eos --------------------
@pytest.mark.parametrize("layout", ["json", "vocab"])
def test_export_with_minimal_gpt2_tokenizer_folder(tmp_path, layout):
    from cgpt.train.data.tokenizer import load_tokenizer

    src = make_bpe(tmp_path / "tok", layout)
    data_tok = load_tokenizer(src)  # what `cgpt prepare` writes into meta.json
    assert data_tok.eos_id == 0
    model = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=320, n_positions=CTX))
    out = H.export_hf(model, tmp_path / "hf", tokenizer_dir=src)
    assert (out / "tokenizer.json").is_file()  # built from vocab + merges when absent
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert cfg["eos_token_id"] == gen["eos_token_id"] == tok.eos_token_id == data_tok.eos_id
    assert cfg["bos_token_id"] == gen["bos_token_id"] == tok.bos_token_id == 0
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.model_max_length == CTX  # follows n_positions
    text = "hello world, continued ✓ 42\n\tpretraining"
    assert tok(text, add_special_tokens=False)["input_ids"] == data_tok.encode(text)
    assert tok.decode(data_tok.encode(text)) == text


def test_export_refuses_tokenizer_without_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    with pytest.raises(CgptError, match="no end-of-text token"):
        H.export_hf(tiny_gpt(), tmp_path / "hf", tokenizer_dir=tmp_path / "tok")
    assert not (tmp_path / "hf").exists()
