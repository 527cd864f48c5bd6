"""cgpt plan --recipe porian|olmo: batch and peak LR from Porian et al. 2024's rounded laws
(docs/REFERENCE.md, Related scaling laws), golden numbers typed in from the formulas:

    N = matmul weights with the (tied) head = 12·L·d² + V·d   (d_ffn = 4·d)
    B = 160·(N/108e6)^(2/3) sequences of 2048 tokens, carried over as tokens to the seq_len
    η = 0.0047·(N/108e6)^(-1/3)        olmo: η/2
    batch rounding: nearest whole sequence; from 64 sequences, nearest multiple of 8
"""

from __future__ import annotations

import json

import pytest

from cgpt.launch.cli import main
from cgpt.model.sizes import num_non_embedding_params, num_params
from cgpt.train.plan import planner as P
from cgpt.train.plan import rules as R
from cgpt.train.plan.recipes import porian_params

# (layers, width, plan options) -> N, B in 2048-token sequences, η (computed by hand from the
# formulas above; the exact values printed to 6 digits)
GOLDEN = [
    # 12·16·1344² + 50257·1344 = 346,816,512 + 67,545,408
    ((16, 1344), {}, 414_361_920, 392.125, 3.00224e-3),
    # 12·4·256² + 8192·256 = 3,145,728 + 2,097,152
    ((4, 256), {"seq_len": 512, "vocab_size": 8192}, 5_242_880, 21.2920, 1.28840e-2),
    # 12·2·64² + 1024·64 = 98,304 + 65,536
    ((2, 64), {"vocab_size": 1024}, 163_840, 2.11244, 4.09040e-2),
]


@pytest.mark.parametrize(("shape", "opts", "n", "b2048", "lr"), GOLDEN)
def test_porian_law_golden(shape, opts, n, b2048, lr):
    # the formulas, typed in again
    assert 160 * (n / 108e6) ** (2 / 3) == pytest.approx(b2048, rel=1e-5)
    assert 0.0047 * (n / 108e6) ** (-1 / 3) == pytest.approx(lr, rel=1e-5)
    # the code's laws
    assert R.porian_batch_tokens(n) == pytest.approx(b2048 * 2048, rel=1e-5)
    assert R.porian_lr(n) == pytest.approx(lr, rel=1e-5)
    plan = P.plan_for_shape(*shape, recipe="porian", **opts)
    assert porian_params(plan.model) == n


@pytest.mark.parametrize(
    ("shape", "opts", "batch", "lr", "olmo_lr"),
    [
        # 392.125 seqs of 2048 -> 392 (a multiple of 8); η 0.00300224 -> 0.003, /2 -> 0.0015
        ((16, 1344), {}, 392, 0.003, 0.0015),
        # the same tokens at seq_len 1024: 784.25 seqs -> 784 (N has no position embeddings)
        ((16, 1344), {"seq_len": 1024}, 784, 0.003, 0.0015),
        # 21.292 × 2048 / 512 = 85.17 seqs -> 88 (nearest multiple of 8 from 64 up)
        ((4, 256), {"seq_len": 512, "vocab_size": 8192}, 88, 0.0129, 0.00644),
        # 2.11 seqs -> 2 (below 64: the nearest whole sequence); 0.040904 -> 0.0409, 0.0205
        ((2, 64), {"vocab_size": 1024}, 2, 0.0409, 0.0205),
    ],
)
def test_porian_and_olmo_plans(shape, opts, batch, lr, olmo_lr):
    porian = P.plan_for_shape(*shape, recipe="porian", **opts)
    olmo = P.plan_for_shape(*shape, recipe="olmo", **opts)
    cerebras = P.plan_for_shape(*shape, **opts)
    for plan, peak in ((porian, lr), (olmo, olmo_lr)):
        assert plan.global_batch_seqs == batch and plan.lr == peak
        assert plan.min_lr == pytest.approx(peak / 10, rel=1e-2)
        # everything else is the family's: tokens = 20 × total params, steps, warmup
        n = num_params(plan.model)
        assert plan.steps == int(20 * n // (batch * plan.seq_len))
        assert plan.warmup_steps == R.warmup_rule(batch * plan.seq_len, plan.steps)
        assert (plan.decay, plan.adam_eps) == (cerebras.decay, cerebras.adam_eps)
    assert porian.recipe == "porian" and olmo.recipe == "olmo"
    assert any("Porian" in note and "2406.19146" in note for note in porian.notes)
    assert any("OLMo-core" in note for note in olmo.notes)


def test_porian_n_counts_matmuls_with_the_head():
    cfg = P.plan_for_shape(16, 1344, recipe="porian").model
    d, V = cfg.n_embd, cfg.vocab_size
    # non-embedding params hold biases and norms too: 13·d per layer + 2·d (ln_f) beyond 12·L·d²
    # (c_attn 3d, c_proj d, ln_1 2d, ln_2 2d, c_fc 4d, mlp c_proj d)
    assert num_non_embedding_params(cfg) == 12 * 16 * d * d + 16 * 13 * d + 2 * d
    assert porian_params(cfg) == num_non_embedding_params(cfg) - 16 * 13 * d - 2 * d + V * d


def test_param_count_changes_tokens_not_the_law():
    total = P.plan_for_shape(16, 1344, recipe="porian")
    ne = P.plan_for_shape(16, 1344, recipe="porian", param_count="non-embedding")
    assert (ne.global_batch_seqs, ne.lr) == (total.global_batch_seqs, total.lr)
    assert ne.tokens < total.tokens


def test_recipe_batch_rounding():
    seq = 1000
    assert R.recipe_batch_seqs(0.2 * seq, seq) == 1  # never below one sequence
    assert R.recipe_batch_seqs(63.4 * seq, seq) == 63
    assert R.recipe_batch_seqs(64.0 * seq, seq) == 64
    assert R.recipe_batch_seqs(67.9 * seq, seq) == 64
    assert R.recipe_batch_seqs(68.1 * seq, seq) == 72


def test_cli_recipes(capsys):
    argv = ["plan", "--params", "400M", "--json"]
    assert main([*argv, "--recipe", "porian"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["recipe"], d["global_batch_seqs"], d["lr"]) == ("porian", 392, 0.003)
    assert main([*argv, "--recipe", "olmo"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["recipe"], d["global_batch_seqs"], d["lr"]) == ("olmo", 392, 0.0015)
    # 48 GPUs: the law's 392 is rounded to 384 (8 per GPU), the peak LR stays the law's
    assert main([*argv, "--recipe", "porian", "--gpus", "48", "--gpu", "h100"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["global_batch_seqs"], d["lr"]) == (384, 0.003)
    # a published size keeps its published recipe unless --rules
    assert main(["plan", "111M", "--recipe", "porian"]) == 2
    assert "--rules" in capsys.readouterr().err
    assert main(["plan", "--params", "400M", "--recipe", "kaplan"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'kaplan'" in err and "porian" in err and "olmo" in err
    assert err.count("\n") == 1 and "Traceback" not in err
