import pytest
import torch

from cgpt.model import GPT, CgptError, ConfigError, GPTConfig, num_params
from cgpt.model.sizes import flops_per_token_algorithmic, num_non_embedding_params

# docs/REFERENCE.md, Model sizes: exact GPT2LMHeadModel counts (tied embeddings)
EXACT = {
    "111M": 111_050_496,
    "256M": 255_977_024,
    "590M": 590_310_912,
    "1.3B": 1_315_723_264,
    "2.7B": 2_651_553_280,
    "6.7B": 6_658_404_352,
    "13B": 12_853_386_240,
}


@pytest.mark.parametrize("name", list(EXACT))
def test_published_sizes_on_meta(name):
    cfg = GPTConfig.from_name(name)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == EXACT[name] == num_params(cfg)


def test_name_aliases():
    assert GPTConfig.from_name("cerebras-gpt-111m").n_layer == 10
    assert GPTConfig.from_name("cerebras/Cerebras-GPT-1.3B").n_embd == 2048
    with pytest.raises(CgptError, match="valid names: 111M, 256M"):
        GPTConfig.from_name("42M")


def test_bad_shapes_name_the_field():
    with pytest.raises(ConfigError, match="n_head"):
        GPTConfig(n_layer=2, n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="n_layer"):
        GPTConfig(n_layer=0, n_embd=32, n_head=4)
    with pytest.raises(ConfigError, match="base_width"):
        GPTConfig(n_layer=2, n_embd=32, n_head=4, mup={"base_width": 64})
    with pytest.raises(ConfigError, match="embeddings_multiplier"):
        GPTConfig(
            n_layer=2, n_embd=64, n_head=4, mup={"base_width": 32, "embeddings_multiplier": 0}
        )


def test_paper_flops_column():
    # docs/REFERENCE.md, Results: 111M trained with 2.6e18 FLOPs over 9,037 × 245,760 tokens
    cfg = GPTConfig.from_name("111M")
    assert num_non_embedding_params(cfg) == 111_050_496 - 50257 * 768 - 2048 * 768
    total = flops_per_token_algorithmic(cfg) * 9037 * 245_760
    assert round(total / 1e18, 1) == 2.6


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=16)
    model = GPT(cfg)
    idx = torch.randint(0, 97, (3, 16))
    loss = model(idx, torch.randint(0, 97, (3, 16)))
    assert loss.shape == () and loss.dtype == torch.float32  # with targets: the loss only
    assert model(idx).shape == (3, 16, 97)
    # a fresh model predicts close to uniform: loss near ln(V)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.3
    assert model.lm_head.weight is model.transformer.wte.weight


def test_init_is_truncated_normal_with_out_std():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=4, n_embd=256, n_head=4, vocab_size=1000, n_positions=64)
    model = GPT(cfg)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.abs().max() <= 2 * 0.02 + 1e-6
    assert abs(w.std().item() - 0.02 * 0.88) < 0.002  # std of N(0,σ) truncated at 2σ ≈ 0.88σ
    out = model.transformer.h[0].attn.c_proj.weight
    assert out.abs().max() <= 2 * cfg.out_init_std + 1e-7
    assert cfg.out_init_std == pytest.approx(0.02 / (2 * 4) ** 0.5)
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)


def test_published_out_std():
    assert GPTConfig.from_name("111M").out_init_std == pytest.approx(0.004472, abs=1e-6)
    assert GPTConfig.from_name("1.3B").out_init_std == 0.0025


def test_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=8)).eval()
    a = torch.randint(0, 50, (1, 8))
    b = a.clone()
    b[0, 5:] = (b[0, 5:] + 1) % 50
    assert torch.equal(model(a)[0, :5], model(b)[0, :5])
