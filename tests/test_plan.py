"""The planner: published recipes equal docs/REFERENCE.md, Training recipe; rules reproduce the
family; budgets invert."""

import json
import math
import re

import numpy as np
import pytest
import yaml
from helpers import byte_token_folder

from cgpt.launch.cli import main
from cgpt.launch.cmd_plan import flag_of
from cgpt.model import CgptError, GPTConfig
from cgpt.train.checks import FieldError
from cgpt.train.config import load_run_config, parse_run_config
from cgpt.train.plan import planner as P
from cgpt.train.plan import rules as R
from cgpt.train.plan.devices import get_device
from cgpt.train.plan.schedule import global_batch_at, lr_at, tokens_before

# docs/REFERENCE.md, Training recipe, typed in again here so the planner's table is checked
# against an independent copy: lr, batch seqs, batch tokens, steps, tokens, warmup, decay, eps
TABLE = {
    "111M": (6.0e-4, 120, 245_760, 9_037, 2.22e9, 1_525, "linear", 1e-8),
    "256M": (6.0e-4, 264, 540_672, 9_468, 5.12e9, 693, "linear", 1e-8),
    "590M": (2.0e-4, 264, 540_672, 21_836, 1.18e10, 693, "linear", 1e-8),
    "1.3B": (2.0e-4, 528, 1_081_344, 24_334, 2.63e10, 346, "cosine", 1e-8),
    "2.7B": (2.0e-4, 528, 1_081_344, 49_041, 5.30e10, 346, "cosine", 1e-8),
    "6.7B": (1.2e-4, 1040, 2_129_920, 62_522, 1.33e11, 176, "linear", 1e-9),
}
OUT_STD = {
    "111M": 0.004472,
    "256M": 0.003780,
    "590M": 0.003333,
    "1.3B": 0.0025,
    "2.7B": 0.0025,
    "6.7B": 0.0025,
    "13B": 0.0025,
}
# docs/REFERENCE.md, Results: train FLOPs and the law's predictions
FLOPS = {
    "111M": 2.6e18,
    "256M": 1.3e19,
    "590M": 6.1e19,
    "1.3B": 2.8e20,
    "2.7B": 1.1e21,
    "6.7B": 6.3e21,
    "13B": 2.3e22,
}
PREDICTED = {
    "111M": 2.603,
    "256M": 2.369,
    "590M": 2.168,
    "1.3B": 1.992,
    "2.7B": 1.849,
    "6.7B": 1.687,
    "13B": 1.580,
}


@pytest.mark.parametrize("name", list(TABLE))
def test_published_recipe_equals_reference(name):
    lr, seqs, btok, steps, tokens, warmup, decay, eps = TABLE[name]
    p = P.plan_published(name)
    assert (p.lr, p.global_batch_seqs, p.global_batch_tokens, p.steps) == (lr, seqs, btok, steps)
    assert (p.warmup_steps, p.decay, p.adam_eps) == (warmup, decay, eps)
    assert p.decay_steps == steps - warmup and p.seq_len == 2048
    assert p.min_lr == pytest.approx(0.1 * lr, rel=1e-12)
    assert float(f"{p.tokens:.3g}") == tokens and p.tokens == steps * btok
    assert (p.adam_betas, p.weight_decay, p.grad_clip) == ((0.9, 0.95), 0.1, 1.0)
    assert round(p.model.out_init_std, 6) == OUT_STD[name]
    assert p.batch_schedule is None


@pytest.mark.parametrize("name", list(FLOPS))
def test_flops_and_predicted_loss(name):
    p = P.plan_published(name)
    assert float(f"{p.train_flops:.2g}") == FLOPS[name]
    assert round(p.law.loss(FLOPS[name]), 3) == PREDICTED[name]
    assert abs(p.predicted_loss - PREDICTED[name]) < 0.003  # exact vs rounded FLOPs
    assert p.train_flops_mfu < p.train_flops  # the two conventions differ; never mixed


def test_13b_batch_schedule_and_lr():
    p = P.plan_published("13B")
    a, b = p.batch_schedule
    assert (
        a.global_batch_seqs,
        a.steps,
        a.schedule_start_step,
        a.warmup_steps,
        a.decay_steps,
        a.decay,
    ) == (720, 57_000, 0, 254, 174_081, "cosine")
    assert (
        b.global_batch_seqs,
        b.steps,
        b.schedule_start_step,
        b.warmup_steps,
        b.decay_steps,
        b.decay,
    ) == (1080, 78_223, 38_000, 169, 116_054, "cosine")
    assert p.steps == 135_223 and p.lr == 1.2e-4 and p.adam_eps == 1e-9
    assert round(p.tokens / 1e9) == 257  # 257B tokens (docs/REFERENCE.md, The 13B batch change)
    # docs/REFERENCE.md, The 13B batch change: 174,335 steps in 720-sequence units
    # = the first phase's planned schedule
    assert a.warmup_steps + a.decay_steps == 174_335
    assert p.tokens / (720 * 2048) == 174_334.5  # 78,223 × 1.5 steps after the switch
    ps = p.plan_section()
    assert tokens_before(ps, p.steps) == p.tokens
    assert global_batch_at(ps, 56_999) == 720 and global_batch_at(ps, 57_000) == 1080
    assert lr_at(ps, 0) == pytest.approx(1.2e-4 / 254)
    assert lr_at(ps, 253) == pytest.approx(1.2e-4)
    # the counter rescale (57,000 -> 38,000) kept the cosine almost continuous at the switch
    before, after = lr_at(ps, 56_999), lr_at(ps, 57_000)
    assert 1.2e-5 < after < 1.2e-4 and abs(after - before) / before < 1e-4
    assert lr_at(ps, p.steps - 1) == pytest.approx(1.2e-5)


def test_rules_reproduce_steps_and_warmup_exactly():
    for name, r in R.RECIPES.items():
        params = P.plan_published(name).params
        for ph in r.phases or (R.Phase(r.global_batch_seqs, r.steps, 0, r.warmup_steps, 0),):
            btok = ph.global_batch_seqs * 2048
            assert R.warmup_rule(btok, 10**9) == ph.warmup_steps, name
        if not r.phases:
            assert R.steps_rule(20 * params, r.global_batch_seqs * 2048) == r.steps, name
    assert R.steps_rule(20 * P.plan_published("13B").params, 720 * 2048) == 174_335


def test_fitted_constants_match_the_table():
    names = list(R.RECIPES)
    n = np.log([P.plan_published(k).params for k in names])
    batch = [R.RECIPES[k].global_batch_seqs * 2048 for k in names[:-1]] + [1080 * 2048]
    slope, icpt = np.polyfit(n, np.log(batch), 1)
    assert (slope, math.exp(icpt)) == (
        pytest.approx(R.BATCH_EXP, abs=1e-4),
        pytest.approx(R.BATCH_COEF, rel=1e-3),
    )
    slope, icpt = np.polyfit(n, np.log([R.RECIPES[k].lr for k in names]), 1)
    assert (slope, math.exp(icpt)) == (
        pytest.approx(R.LR_EXP, abs=1e-4),
        pytest.approx(R.LR_COEF, rel=1e-3),
    )


def test_rule_deviations_are_exactly_the_documented_ones():
    found = P.rule_deviations()
    assert set(found) == set(R.DEVIATIONS), found
    for name in R.RECIPES:  # shapes: layers and width always reproduced
        g = GPTConfig.from_name(name)
        layers, width, heads = P.shape_for_params(P.plan_published(name).params)
        assert (layers, width) == (g.n_layer, g.n_embd)
        rule = P.rule_plan_for(name)
        pub = P.plan_published(name)
        assert abs(rule.tokens / pub.tokens - 1) < 1e-4  # both are 20 tokens/param
        assert abs(rule.warmup_steps * rule.global_batch_tokens - 375e6) < rule.global_batch_tokens


@pytest.mark.parametrize("name", ["111M", "1.3B", "6.7B"])
def test_flops_budget_inverts_to_the_size(name):
    pub = P.plan_published(name)
    p = P.plan_for_flops(pub.train_flops)
    assert abs(p.params / pub.params - 1) < 0.02
    assert abs(p.train_flops / pub.train_flops - 1) < 0.1


def test_gpu_hours_budget():
    h100 = get_device("h100")
    p = P.plan_for_gpu_hours(2000, h100, mfu=0.4)
    c = 2000 * 3600 * 989e12 * 0.4
    assert abs(p.train_flops_mfu / c - 1) < 0.15
    bigger = P.plan_for_gpu_hours(8000, h100, mfu=0.4)
    assert bigger.params > p.params and bigger.tokens > p.tokens
    hours, gpu_hours = P.time_on(p, 64, h100, 0.4)
    assert gpu_hours == pytest.approx(2000, rel=0.15) and hours == pytest.approx(gpu_hours / 64)


def test_any_size_in_family_style():
    p = P.plan_for_params(400e6)
    m = p.model
    assert abs(p.params / 400e6 - 1) < 0.1
    assert m.head_dim in (64, 128) and m.n_inner == 4 * m.n_embd
    assert p.tokens == p.steps * p.global_batch_tokens
    assert p.global_batch_seqs % 8 == 0 and p.decay_steps == p.steps - p.warmup_steps
    p40 = P.plan_for_params(400e6, tokens_per_param=40)
    assert p40.tokens == pytest.approx(2 * p.tokens, rel=0.01)
    s = P.plan_for_shape(20, 1280)
    assert (s.model.n_layer, s.model.n_embd, s.model.n_head) == (20, 1280, 20)


@pytest.mark.parametrize("name", ["111M", "590M", "13B"])
@pytest.mark.parametrize("gpus", [1, 4, 8, 24, 40])
def test_batch_split_multiplies_out(name, gpus):
    plan = P.plan_published(name)
    try:
        plan = P.with_cluster(plan, gpus, get_device("h200"), zero_stage=3)
    except CgptError as e:  # a non-dividing GPU count, or too little memory: with choices
        if any(p.global_batch_seqs % gpus for p in plan.phases()):
            assert "ranks" in str(e)
        else:
            assert isinstance(e, FieldError) and (name, gpus) == ("13B", 1)
            assert "--gpus 2 --zero-stage 3" in e.spelled(flag_of)
        return
    c = plan.cluster
    for ph, accum in zip(plan.phases(), c.grad_accum):
        assert c.micro_batch * accum * gpus == ph.global_batch_seqs
    assert c.memory.total <= 0.9 * c.device.memory_bytes


def test_bad_cluster_inputs_give_choices():
    h100 = get_device("h100")
    # the library names its fields (gpus 5), `cgpt plan` spells them as its flags (--gpus 5)
    with pytest.raises(FieldError, match="gpus 5 or gpus 6 or gpus 8") as e:
        P.with_cluster(P.plan_published("13B"), 7, h100)
    assert "--gpus 5 or --gpus 6 or --gpus 8" in e.value.spelled(flag_of)
    with pytest.raises(FieldError, match="zero_stage 2 would fit") as e:
        P.with_cluster(P.plan_published("13B"), 8, h100, zero_stage=1)
    assert "--zero-stage 2 would fit" in e.value.spelled(flag_of)
    with pytest.raises(FieldError, match="zero_stage 3 .4 GPUs. would fit") as e:
        P.with_cluster(P.plan_published("13B"), 1, h100)
    assert re.search("--zero-stage 3 .4 GPUs. would fit", e.value.spelled(flag_of))
    auto = P.with_cluster(P.plan_published("13B"), 8, h100)
    assert auto.cluster.zero_stage == 2
    with pytest.raises(CgptError, match="unknown GPU"):
        get_device("tpu-v9")
    for bad in (0, -1e20, float("nan"), float("inf")):
        with pytest.raises(CgptError, match="positive"):
            P.plan_for_flops(bad)
    with pytest.raises(CgptError, match="MFU"):
        P.plan_for_gpu_hours(100, h100, mfu=1.5)


def test_fit_file(tmp_path):
    f = tmp_path / "fit.json"
    f.write_text(
        json.dumps(
            {"tokens_per_param": 10, "loss_law": {"form": "paper", "a": 1e22, "b": 0.05, "c": 1.0}}
        )
    )
    fit = R.load_fit(f)
    p = P.plan_for_params(400e6, fit=fit)
    assert p.target_tokens_per_param == 10 and p.law.a == 1e22
    assert p.predicted_loss == pytest.approx((p.train_flops / 1e22) ** -0.05 + 1.0)
    for bad in (
        "{",
        "[]",
        '{"tokens_per_param": -1}',
        '{"loss_law": {"form": "chinchilla"}}',
        '{"loss_law": {"a": 1, "b": 0}}',
    ):
        f.write_text(bad)
        with pytest.raises(CgptError, match=str(f)):
            R.load_fit(f)
    with pytest.raises(CgptError, match="not found"):
        R.load_fit(tmp_path / "missing.json")


def test_fit_file_interval_and_check(tmp_path, capsys):
    """A sweep's fit.json with bootstrap draws: the plan's predicted loss comes with a 95%
    interval (the draws' curves at the plan's FLOPs plus the residual noise) and the
    sweep's own leave-largest-out error."""
    draws = [[1e22 * (1 + 0.01 * k), 0.05, 1.0] for k in range(-20, 21)]
    f = tmp_path / "fit.json"
    f.write_text(
        json.dumps(
            {
                "tokens_per_param": 20,
                "loss_law": {"form": "paper", "a": 1e22, "b": 0.05, "c": 1.0, "draws": draws}
                | {"residual_scale": 0.0},
                "prediction": {
                    "leave_largest_out": {"rel_error": 0.0123, "inside_pi95": True, "x": 1}
                },
            }
        )
    )
    law = R.load_fit(f).law
    c = 1e20
    curves = sorted((c / a) ** -b + cc for a, b, cc in draws)
    lo, hi = law.interval(c)
    assert curves[0] <= lo < law.loss(c) < hi <= curves[-1]
    assert "+1.23%" in law.check and "inside" in law.check
    assert main(["plan", "--params", "400M", "--fit", str(f), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    lo, hi = d["predicted_loss_pi95"]
    assert lo < d["predicted_loss"] < hi and "+1.23%" in d["loss_law_check"]
    assert main(["plan", "--params", "400M", "--fit", str(f)]) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "fit check" in out
    f.write_text(json.dumps({"loss_law": {"a": 1e22, "b": 0.05, "c": 1.0, "draws": [[1, 2]]}}))
    with pytest.raises(CgptError, match="draws"):
        R.load_fit(f)


def test_run_config_round_trip():
    plan = P.with_cluster(P.plan_published("1.3B"), 16, get_device("h100"))
    cfg = plan.to_run_config("data/x", runtime={"seed": 7})
    again = parse_run_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.runtime.micro_batch == plan.cluster.micro_batch
    assert again.plan.steps == 24_334 and again.model.n_layer == 24


def test_cli_json_and_write(tmp_path, capsys):
    out = tmp_path / "run.yaml"
    pile = byte_token_folder(tmp_path / "pile", 120 * 2048, 4096, vocab_size=50257)
    assert (
        main(
            [
                "plan",
                "111M",
                "--gpus",
                "8",
                "--gpu",
                "h100",
                "--json",
                "--write",
                str(out),
                "--data",
                str(pile),
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    for key in (
        "name",
        "params",
        "n_layer",
        "n_embd",
        "n_head",
        "d_ffn",
        "seq_len",
        "tokens",
        "steps",
        "global_batch_seqs",
        "global_batch_tokens",
        "lr",
        "min_lr",
        "warmup_steps",
        "decay",
        "decay_steps",
        "adam_betas",
        "adam_eps",
        "weight_decay",
        "grad_clip",
        "train_flops",
        "predicted_loss",
        "micro_batch",
        "grad_accum",
        "memory_per_gpu_bytes",
        "hours",
    ):
        assert key in d, key
    assert d["micro_batch"] * d["grad_accum"] * 8 == 120
    cfg = load_run_config(out)
    assert cfg.plan.steps == 9037 and cfg.runtime.micro_batch == d["micro_batch"]
    assert main(["plan", "--layers", "20", "--width", "1280"]) == 0
    table = capsys.readouterr().out
    assert "predicted loss" in table and "," in table


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--flops", "0"], "positive"),
        (["--flops", "abc"], "expected a number"),
        (["--gpu-hours", "10", "--gpu", "tpu"], "unknown GPU"),
        (["--gpu-hours", "10"], "--gpu"),
        (["13B", "--gpus", "7", "--gpu", "h100"], "cannot be split"),
        ([], "exactly one"),
        (["111M", "--params", "1M"], "exactly one"),
        (["--params", "1k"], "smallest"),
        (["7B"], "unknown model size"),
        (["111M", "--gpus", "8"], "--gpu"),
        (["--params", "400M", "--tokens-per-param", "-2"], "tokens per parameter"),
    ],
)
def test_cli_bad_input_one_line(argv, msg, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_write_never_damages(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    pile = byte_token_folder(tmp_path / "pile", 120 * 2048, 4096, vocab_size=50257)
    assert main(["plan", "111M", "--write", str(blocker / "run.yaml"), "--data", str(pile)]) == 2
    assert blocker.read_text() == "keep" and "cannot write" in capsys.readouterr().err


def test_cli_rule_batch_follows_the_gpu_count(capsys):
    assert main(["plan", "--params", "100M", "--gpus", "7", "--gpu", "h100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["global_batch_seqs"] % 7 == 0
    assert d["micro_batch"] * d["grad_accum"] * 7 == d["global_batch_seqs"]
    assert any("rounded" in n for n in d["notes"])


def test_every_example_in_plan_help_works(capsys, tmp_path, monkeypatch):
    """The examples `cgpt plan --help` prints are commands a user will paste."""
    import shlex

    from cgpt.launch import cmd_plan

    monkeypatch.chdir(tmp_path)  # the --write example writes run.yaml here
    for name in ("pile", "web", "code"):  # the folders the examples name, GPT-2's vocab
        byte_token_folder(tmp_path / "data" / name, 120 * 2048, 4096, vocab_size=50257)
    examples = [
        line.strip().split("  ")[0]
        for line in cmd_plan.DESCRIPTION.splitlines()
        if line.strip().startswith("cgpt plan ")
    ]
    assert len(examples) >= 6
    for ex in examples:
        assert main(shlex.split(ex)[1:]) == 0, (ex, capsys.readouterr().err)
    assert (tmp_path / "run.yaml").is_file()


# ---- recipes: other papers' batch/LR laws ----------------------------------------------------
def test_deepseek_laws_golden():
    # hand-computed: C = 1e20 -> B = 0.2920·10^(20·0.3271) = 0.2920·10^6.542 ≈ 1.01715e6 tokens,
    # η = 0.3118·10^(-2.5) ≈ 9.8600e-4 (DeepSeek LLM, docs/REFERENCE.md, Related scaling laws)
    assert R.deepseek_batch_tokens(1e20) == pytest.approx(1.01715e6, rel=1e-4)
    assert R.deepseek_lr(1e20) == pytest.approx(9.8600e-4, rel=1e-4)
    # M = 72·L·d² + 12·L·d·l_seq at L=16, d=1344, l_seq=2048: 2,080,899,072 + 528,482,304
    assert R.deepseek_flops_per_token(16, 1344, 2048) == 2_609_381_376


def test_deepseek_recipe_plan_matches_the_formulas():
    from cgpt.model.sizes import num_non_embedding_params, num_params

    plan = P.plan_for_shape(16, 1344, recipe="deepseek")
    n = num_params(plan.model)
    m = 72 * 16 * 1344**2 + 12 * 16 * 1344 * 2048
    c = m * 20 * n  # D = 20 tokens per (total) parameter
    assert plan.global_batch_seqs == round(0.2920 * c**0.3271 / 2048)
    assert plan.lr == pytest.approx(0.3118 * c**-0.1250, rel=5e-3)  # rounded to 3 digits
    assert plan.min_lr == pytest.approx(plan.lr / 10, rel=1e-2)
    assert plan.steps == int(20 * n // (plan.global_batch_seqs * 2048))
    assert any("deepseek" in note for note in plan.notes)
    # non-embedding N: D = 20 × non-embedding params, and C follows it
    ne = P.plan_for_shape(16, 1344, recipe="deepseek", param_count="non-embedding")
    n_ne = num_non_embedding_params(ne.model)
    c_ne = m * 20 * n_ne
    assert ne.global_batch_seqs == round(0.2920 * c_ne**0.3271 / 2048)
    assert ne.steps == int(20 * n_ne // (ne.global_batch_seqs * 2048))


def test_param_count_non_embedding():
    from cgpt.model.sizes import num_non_embedding_params

    plan = P.plan_for_params(400e6, param_count="non-embedding")
    n_ne = num_non_embedding_params(plan.model)
    assert n_ne == pytest.approx(400e6, rel=0.1) and plan.params > n_ne
    assert plan.tokens == pytest.approx(20 * n_ne, rel=0.01)
    # the Cerebras batch/LR fits still read the total count
    assert plan.lr == R.lr_rule(plan.params)
    f = P.plan_for_flops(1e20, param_count="non-embedding")
    assert f.train_flops == pytest.approx(1e20, rel=0.25)


def test_published_recipes_stay_exact_and_cli_recipes(capsys):
    for name in TABLE:
        assert P.plan_published(name).lr == TABLE[name][0]
    assert main(["plan", "111M", "--recipe", "deepseek"]) == 2
    assert "--rules" in capsys.readouterr().err
    assert main(["plan", "--params", "400M", "--recipe", "kaplan"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    argv = ["plan", "--params", "400M", "--recipe", "deepseek", "--json", "--gpus", "8"]
    assert main([*argv, "--gpu", "h100"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recipe"] == "deepseek" and d["global_batch_seqs"] % 8 == 0  # rebatched for 8
    assert d["lr"] == P.plan_for_params(400e6, recipe="deepseek").lr  # LR kept on rebatch


# ---- inference-aware planning (Sardana et al. 2023) -------------------------------------------
# Besiroglu et al. 2024 (docs/REFERENCE.md, Related scaling laws), typed in again here
BES = dict(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def _loss(n, d, E, A, B, alpha, beta):
    return E + A / n**alpha + B / d**beta


def _tokens_for(n, target, E, A, B, alpha, beta):
    return (B / (target - E - A / n**alpha)) ** (1 / beta)


def test_inference_plan_at_zero_inference_is_compute_optimal():
    from cgpt.train.plan.inference import plan_inference

    c = 1e21
    ip = plan_inference(c, 0)
    # brute force: the N that minimises L(N, C/(6N)) on a fine log grid
    ns = np.exp(np.linspace(np.log(1e8), np.log(1e11), 200_001))
    n_best = ns[np.argmin(_loss(ns, c / 6 / ns, **BES))]
    assert ip.params == pytest.approx(n_best, rel=1e-4)
    assert 6 * ip.params * ip.tokens == pytest.approx(c, rel=1e-12)
    assert ip.params == ip.opt_params and ip.extra_train_flops == 0
    assert ip.break_even_tokens is None
    assert 19 < ip.tokens_per_param < 23  # "roughly 20 tokens per parameter"


@pytest.mark.parametrize("t", [1e10, 1e12, 1e14])
def test_inference_plan_minimises_lifetime_flops_at_the_same_loss(t):
    from cgpt.train.plan.inference import plan_inference

    c = 1e21
    ip = plan_inference(c, t)
    n_opt, d_opt = ip.opt_params, ip.opt_tokens
    target = _loss(n_opt, d_opt, **BES)
    assert ip.loss == pytest.approx(target, rel=1e-12)
    # the constraint: the chosen (N, D) reaches exactly the compute-optimal loss
    assert _loss(ip.params, ip.tokens, **BES) == pytest.approx(target, abs=1e-10)
    # brute force over N along the constraint
    n_min = (BES["A"] / (target - BES["E"])) ** (1 / BES["alpha"])
    ns = np.exp(np.linspace(np.log(n_min * 1.0001), np.log(n_opt), 400_001))
    cost = 6 * ns * _tokens_for(ns, target, **BES) + 2 * ns * t
    assert ip.params == pytest.approx(ns[np.argmin(cost)], rel=2e-3)

    # stationarity: a central difference of the lifetime cost along the constraint is ~0
    def f(n):
        return 6 * n * _tokens_for(n, target, **BES) + 2 * n * t

    h = ip.params * 1e-5
    slope = (f(ip.params + h) - f(ip.params - h)) / (2 * h)
    assert abs(slope * ip.params) < 1e-6 * f(ip.params)
    # the bookkeeping
    assert ip.extra_train_flops == pytest.approx(6 * ip.params * ip.tokens - c, rel=1e-9)
    assert ip.total_flops() <= 6 * n_opt * d_opt + 2 * n_opt * t
    be = ip.break_even_tokens
    assert 0 < be < t  # the optimum pays for itself before T
    lhs = 6 * ip.params * ip.tokens + 2 * ip.params * be
    assert lhs == pytest.approx(6 * n_opt * d_opt + 2 * n_opt * be, rel=1e-9)


def test_inference_plan_shrinks_the_model_as_inference_grows():
    from cgpt.train.plan.inference import plan_inference

    ns = [plan_inference(1e22, t).params for t in (0, 1e11, 1e12, 1e13, 1e14)]
    assert all(a > b for a, b in zip(ns, ns[1:]))
    tpps = [plan_inference(1e22, t).tokens_per_param for t in (0, 1e12, 1e14)]
    assert tpps[0] < 25 < tpps[1] < tpps[2]
    with pytest.raises(CgptError, match=">= 0"):
        plan_inference(1e21, -1)


def test_plan_inference_tokens_cli_and_fit(tmp_path, capsys):
    from cgpt.train.plan.inference import ChinchillaLaw, flops_for_loss, plan_inference
    from cgpt.train.plan.request import PlanRequest, plan

    p = plan(PlanRequest(flops=1e21, inference_tokens=1e12))
    opt = plan(PlanRequest(flops=1e21))
    target = _loss(opt.params, opt.tokens, **BES)  # the compute-optimal plan's loss, one law
    ip = plan_inference(flops_for_loss(ChinchillaLaw(**BES), target), 1e12)
    assert ip.loss == pytest.approx(target, rel=1e-9)
    # the chosen N goes through the shape rules; D is the law's for that N at the target
    assert p.params == pytest.approx(ip.params, rel=0.15)
    assert _loss(p.params, p.tokens, **BES) == pytest.approx(target, abs=1e-3)
    assert p.inference.choice.params == ip.params
    assert main(["plan", "--flops", "1e21", "--inference-tokens", "1T", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    sbs = d["inference"]["side_by_side"]
    assert d["predicted_loss"] == sbs["inference_aware"]["predicted_loss"]
    assert sbs["compute_optimal"]["params"] == opt.params
    assert main(["plan", "--flops", "1e21", "--inference-tokens", "1e12"]) == 0
    out = capsys.readouterr().out
    assert "break-even" in out and f"{target:.4f} | {target:.4f}" in out
    # the user's own approach-3 fit
    law = dict(E=1.5, A=300.0, B=1500.0, alpha=0.33, beta=0.33)
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"tokens_per_param": 20, "loss_law": None, "chinchilla": law}))
    assert main(["plan", "--flops", "1e21", "--inference-tokens", "1e12", "--fit", str(fit),
                 "--json"]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)["inference"]
    opt = plan(PlanRequest(flops=1e21, fit=str(fit)))
    assert d["loss"] == pytest.approx(_loss(opt.params, opt.tokens, **law), rel=1e-9)
    # errors
    fit.write_text(json.dumps({"chinchilla": {"skipped": "needs at least 6 points"}}))
    assert main(["plan", "--flops", "1e21", "--inference-tokens", "1e12", "--fit", str(fit)]) == 2
    assert "needs at least 6 points" in capsys.readouterr().err
    assert main(["plan", "--params", "1e9", "--inference-tokens", "1e12"]) == 2
    assert "--flops" in capsys.readouterr().err
    bad = ["plan", "--flops", "1e21", "--inference-tokens", "1e12", "--tokens-per-param", "30"]
    assert main(bad) == 2
