"""μP export: the multipliers fold into plain GPT-2 weights with identical logits."""

import json

import pytest
import torch

from cgpt.model import GPT, GPTConfig
from cgpt.model.mup_export import fold_mup, plain_model_from_folded

CFG = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=101, n_positions=32)


def trained_like(mup: dict | None) -> GPT:
    """A μP model with non-trivial biases and LayerNorms (a fresh init has them 0/1)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG, mup=mup))
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(
    "mup",
    [
        {"base_width": 16},  # m = 4, the multipliers of docs/REFERENCE.md, Cerebras-GPT-μP
        {
            "base_width": 32,
            "embeddings_multiplier": 3.5,
            "output_multiplier": 2.0,
            "attn_scale_by_d_head": False,
        },
    ],
)
def test_fold_equals_mup_forward(mup):
    model = trained_like(mup)
    sd, overrides = fold_mup(model)
    assert overrides["tie_word_embeddings"] is False and "lm_head.weight" in sd
    assert overrides["cgpt_mup_folded"]["untied_lm_head"] is True
    plain = plain_model_from_folded(model, sd).eval()
    assert plain.config.mup is None and plain.lm_head.weight is not plain.transformer.wte.weight
    idx = torch.randint(0, 101, (3, 32))
    with torch.no_grad():
        ref, got = model(idx), plain(idx)
    assert ref.abs().mean() > 0.05  # a real signal, not all-zero logits
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_fold_leaves_the_model_untouched_and_skips_plain_models():
    model = trained_like({"base_width": 16})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_mup(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    sp = trained_like(None)
    sd, overrides = fold_mup(sp)
    assert overrides == {} and "lm_head.weight" not in sd
    assert torch.equal(sd["transformer.wte.weight"], sp.transformer.wte.weight)


def test_fold_stays_tied_when_input_and_output_scales_agree():
    # embeddings_multiplier == output_multiplier / m: one matrix can carry both scales
    model = trained_like({"base_width": 32, "embeddings_multiplier": 0.5, "output_multiplier": 1.0})
    sd, overrides = fold_mup(model)
    assert overrides["tie_word_embeddings"] is True and "lm_head.weight" not in sd
    plain = plain_model_from_folded(model, sd).eval()
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(plain(idx), model(idx), atol=2e-5, rtol=1e-5)


def test_export_hf_loads_in_transformers_without_remote_code(tmp_path):
    transformers = pytest.importorskip("transformers")
    from cgpt.model.hf import export_hf

    model = trained_like({"base_width": 16})
    out = export_hf(model, tmp_path / "hf")  # verifies logits itself
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert cfg["cgpt_mup_folded"]["embeddings_multiplier"] == 10.0
    assert cfg["cgpt_mup_folded"]["width_mult"] == 4.0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=5e-5, rtol=1e-4)
