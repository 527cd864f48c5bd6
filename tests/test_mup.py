"""μP model, optimizer groups and plans against docs/REFERENCE.md, Cerebras-GPT-μP."""

import math

import pytest
import torch
import yaml

from cgpt.launch.cli import main as cli_main
from cgpt.model import GPT, ConfigError, GPTConfig
from cgpt.model.config import MuPConfig
from cgpt.model.errors import CgptError
from cgpt.train.config import load_run_config, parse_run_config
from cgpt.train.loop.optim import param_groups
from cgpt.train.plan.mup import (
    MUP_SIZES,
    apply_mup,
    config_path,
    mup_run_config,
    plan_published_mup,
)
from cgpt.train.plan.planner import plan_for_shape, plan_published
from cgpt.train.plan.schedule import lr_at

TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=16)


def test_mup_off_is_exactly_the_standard_model():
    # neutral μP (m = 1, multipliers 1, sqrt(d_head) attention, base std 0.02) must reproduce
    # the standard model bit for bit: same init draws, same logits, same optimizer groups
    neutral = MuPConfig(
        base_width=64,
        embeddings_multiplier=1,
        output_multiplier=1,
        attn_scale_by_d_head=False,
        base_init_std=0.02,
    )
    torch.manual_seed(0)
    sp = GPT(GPTConfig(**TINY))
    torch.manual_seed(0)
    mp = GPT(GPTConfig(**TINY, mup=neutral))
    for (n, a), (_, b) in zip(sp.state_dict().items(), mp.state_dict().items()):
        assert torch.equal(a, b), n
    idx = torch.randint(0, 97, (2, 16))
    assert torch.equal(sp(idx), mp(idx))
    assert [g["lr_scale"] for g in param_groups(mp, 0.1)] == [1.0, 1.0]
    # and without a mup section nothing μP is active or serialised
    assert sp.embeddings_multiplier == sp.output_multiplier == 1.0
    assert all(b.attn.scale is None for b in sp.transformer.h)
    assert "mup" not in sp.config.to_dict()


def test_mup_changes_the_forward():
    torch.manual_seed(0)
    sp = GPT(GPTConfig(**TINY))
    torch.manual_seed(0)
    mp = GPT(GPTConfig(**TINY, mup={"base_width": 32}))
    idx = torch.randint(0, 97, (2, 16))
    assert mp.embeddings_multiplier == 10 and mp.output_multiplier == 0.5
    assert all(b.attn.scale == 1 / 16 for b in mp.transformer.h)  # 1/d_head
    assert not torch.allclose(sp(idx), mp(idx))


@pytest.mark.parametrize("name", list(MUP_SIZES))
def test_mup_init_and_lr_groups_match_reference(name):
    row = MUP_SIZES[name]
    cfg = GPTConfig.from_name(name, mup=MuPConfig())
    assert cfg.mup_width_mult == row.width_mult
    with torch.device("meta"):
        model = GPT(cfg)
    assert round(model.output_multiplier, 4) == row.logits_multiplier
    stds = model.init_stds()
    L, m = cfg.n_layer, row.width_mult
    assert stds["transformer.wte.weight"] == stds["transformer.wpe.weight"] == 0.08
    assert round(stds["transformer.h.0.attn.c_attn.weight"], 4) == row.hidden_init_std
    assert round(stds["transformer.h.0.mlp.c_fc.weight"], 4) == row.hidden_init_std
    out = 0.08 / math.sqrt(2 * m * L)
    assert stds["transformer.h.0.attn.c_proj.weight"] == pytest.approx(out)
    assert stds[f"transformer.h.{L - 1}.mlp.c_proj.weight"] == pytest.approx(out)
    groups = param_groups(model, 0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for pname, p in model.named_parameters():
        g = by_param[id(p)]
        hidden = pname.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
        assert g["lr_scale"] == pytest.approx(1 / m if hidden else 1.0), pname
        assert g["weight_decay"] == (0.1 if p.dim() == 2 else 0.0), pname


def test_init_stds_realised_on_a_small_mup_model():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            n_layer=2, n_embd=512, n_head=8, vocab_size=512, n_positions=64, mup={"base_width": 128}
        )
    )
    trunc = 0.8796  # std of a normal truncated at ±2σ, in units of σ
    for name, s in model.init_stds().items():
        p = dict(model.named_parameters())[name]
        assert p.std().item() == pytest.approx(trunc * s, rel=0.05), name


@pytest.mark.parametrize("name", list(MUP_SIZES))
def test_five_mup_plans_equal_reference(name):
    std, mup = plan_published(name), plan_published_mup(name)
    row = MUP_SIZES[name]
    assert (mup.lr, mup.min_lr) == (6e-3, 6e-4)
    assert mup.decay == row.decay == ("cosine" if name in ("1.3B", "2.7B") else "linear")
    for key in ("steps", "warmup_steps", "decay_steps", "global_batch_seqs", "tokens", "seq_len"):
        assert getattr(mup, key) == getattr(std, key), key
    assert mup.model.mup == MuPConfig(
        base_width=256,
        embeddings_multiplier=10,
        output_multiplier=1,
        attn_scale_by_d_head=True,
        base_init_std=0.08,
    )
    assert mup.model.mup_width_mult == row.width_mult
    rec = mup.mup_recipe
    assert round(rec["logits_multiplier"], 4) == row.logits_multiplier
    assert round(rec["init_std_hidden"], 4) == row.hidden_init_std
    # the schedule: warm up to 6e-3, end at 6e-4; hidden matrices run at that / m
    ps = mup.plan_section()
    assert lr_at(ps, mup.warmup_steps - 1) == pytest.approx(6e-3)
    assert lr_at(ps, mup.steps - 1) == pytest.approx(6e-4)
    mid = lr_at(ps, mup.warmup_steps + mup.decay_steps // 2)
    assert mid == pytest.approx(3.3e-3, rel=1e-3)  # linear and cosine both cross the middle


@pytest.mark.parametrize("name", list(MUP_SIZES))
def test_shipped_mup_configs_equal_the_planner(name):
    path = config_path("configs", name)
    assert load_run_config(path).to_dict() == mup_run_config(name).to_dict()
    assert yaml.safe_load(path.read_text())["model"]["mup"]["base_width"] == 256


def test_mup_only_for_the_five_published_sizes_and_wide_enough_shapes():
    with pytest.raises(CgptError, match="111M, 256M, 590M, 1.3B, 2.7B"):
        apply_mup(plan_published("6.7B"))
    custom = apply_mup(plan_for_shape(4, 512, 8))  # a custom shape: μP with base width 256
    assert custom.model.mup_width_mult == 2 and custom.lr == 6e-3
    with pytest.raises(CgptError, match="base width 256"):
        apply_mup(plan_for_shape(2, 128, 2))
    with pytest.raises(CgptError, match="already"):
        apply_mup(plan_published_mup("111M"))


def test_cli_plan_mup(capsys):
    assert cli_main(["plan", "1.3B", "--mup", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["lr"] == 6e-3 and d["decay"] == "cosine" and d["mup"]["base_width"] == 256
    assert cli_main(["plan", "13B", "--mup"]) == 2
    assert "111M, 256M, 590M, 1.3B, 2.7B" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mup, field",
    [
        ({"base_width": 1024}, "base_width"),  # wider than the 768-wide model
        ({"base_width": 0}, "base_width"),
        ({"embeddings_multiplier": 0}, "embeddings_multiplier"),
        ({"output_multiplier": 0}, "output_multiplier"),
        ({"base_init_std": -1}, "base_init_std"),
    ],
)
def test_bad_mup_settings_name_the_field(mup, field):
    with pytest.raises(ConfigError, match=f"mup.{field}"):
        GPTConfig.from_name("111M", mup=mup)
    data = mup_run_config("111M").to_dict()
    data["model"]["mup"].update(mup)
    with pytest.raises(ConfigError, match=f"mup.{field}"):
        parse_run_config(data)
