"""LR schedules: golden values typed in by hand (not computed with the code under test)."""

import json

import pytest
import yaml
from helpers import byte_token_folder

from cgpt.launch.cli import main
from cgpt.train.config import PlanSection, parse_run_config
from cgpt.train.plan import planner as P
from cgpt.train.plan.schedule import cooldown_steps, lr_at


def _section(**kw) -> PlanSection:
    base = dict(
        params=1,
        seq_len=8,
        tokens=8_000,
        steps=1000,
        global_batch_seqs=1,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        decay_steps=900,
    )
    return PlanSection(**{**base, **kw})


# steps=1000, warmup=100, peak 1e-3, min 1e-4, cooldown 20% of 1000 = 200 steps from step 800:
# warmup: lr·(s+1)/100; stable: 1e-3; cooldown: 1e-3 - 9e-4·(s-800+1)/200
WSD_GOLDEN = {
    0: 1e-5,  # first warmup step
    49: 5e-4,
    99: 1e-3,  # warmup end: the peak
    100: 1e-3,  # stable
    500: 1e-3,
    799: 1e-3,  # last stable step
    800: 9.955e-4,  # cooldown start: 1e-3 - 9e-4/200
    899: 5.5e-4,  # halfway: 1e-3 - 9e-4·100/200
    998: 1.045e-4,  # 1e-3 - 9e-4·199/200
    999: 1e-4,  # last step: min_lr
}


@pytest.mark.parametrize("step, lr", sorted(WSD_GOLDEN.items()))
def test_wsd_golden(step, lr):
    plan = _section(decay="wsd")
    assert plan.cooldown_fraction == 0.2  # the default
    assert lr_at(plan, step) == pytest.approx(lr, rel=1e-12)


def test_wsd_cooldown_fraction():
    # 10% of 1000 = 100 cooldown steps from step 900: 1e-3 - 9e-4·(s-899)/100
    plan = _section(decay="wsd", cooldown_fraction=0.1)
    assert cooldown_steps(plan.phases()[0]) == 100
    assert lr_at(plan, 899) == pytest.approx(1e-3)
    assert lr_at(plan, 900) == pytest.approx(9.91e-4)
    assert lr_at(plan, 949) == pytest.approx(5.5e-4)
    assert lr_at(plan, 999) == pytest.approx(1e-4)
    # a cooldown longer than the decay phase is the whole decay phase: the linear schedule
    whole = _section(decay="wsd", cooldown_fraction=1.0)
    linear = _section(decay="linear")
    for s in (0, 99, 100, 500, 999):
        assert lr_at(whole, s) == pytest.approx(lr_at(linear, s), rel=1e-12)


def test_linear_and_cosine_unchanged():
    lin, cos = _section(decay="linear"), _section(decay="cosine")
    assert lr_at(lin, 99) == pytest.approx(1e-3)
    assert lr_at(lin, 549) == pytest.approx(5.5e-4)  # 1e-3 - 9e-4·450/900
    assert lr_at(cos, 549) == pytest.approx(5.5e-4)  # cosine midpoint: (1e-3 + 1e-4)/2
    assert lr_at(lin, 999) == pytest.approx(1e-4) and lr_at(cos, 999) == pytest.approx(1e-4)


def test_cooldown_fraction_only_with_wsd_and_out_of_yaml_otherwise():
    with pytest.raises(ValueError, match="wsd only"):
        _section(decay="linear", cooldown_fraction=0.2)
    with pytest.raises(ValueError):
        _section(decay="wsd", cooldown_fraction=0.0)
    # configs without wsd do not grow a key (older run folders compare equal on resume)
    assert "cooldown_fraction" not in _section().model_dump()
    assert "cooldown_fraction" not in _section().phases()[0].model_dump()
    assert _section(decay="wsd").model_dump()["cooldown_fraction"] == 0.2


def test_planner_and_cli_wsd(tmp_path, capsys):
    plan = P.plan_for_params(400e6, decay="wsd", cooldown_fraction=0.25)
    assert plan.decay == "wsd" and plan.cooldown_fraction == 0.25
    n = plan.steps
    cool = round(0.25 * n)
    assert cooldown_steps(plan.phases()[0]) == cool
    assert lr_at(plan.section, n - cool - 1) == plan.lr  # last stable step
    assert lr_at(plan.section, n - 1) == pytest.approx(plan.min_lr)
    out = tmp_path / "run.yaml"
    data = byte_token_folder(tmp_path / "data", 136 * 2048, 4096, vocab_size=50257)
    argv = ["plan", "--params", "100M", "--decay", "wsd", "--json", "--write", str(out)]
    argv += ["--data", str(data)]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["decay"] == "wsd" and d["cooldown_fraction"] == 0.2
    assert d["cooldown_steps"] == round(0.2 * d["steps"])
    cfg = parse_run_config(yaml.safe_load(out.read_text()))
    assert cfg.plan.decay == "wsd" and cfg.plan.cooldown_fraction == 0.2
    assert main(["plan", "--params", "100M", "--decay", "wsd", "--gpus", "7", "--gpu", "h100"]) == 0
    assert "linear cooldown over the last" in capsys.readouterr().out  # rebatch keeps wsd
    assert main(["plan", "--params", "100M", "--cooldown-fraction", "0.3"]) == 2
    assert "--decay wsd" in capsys.readouterr().err
    assert main(["plan", "111M", "--decay", "wsd"]) == 2  # published recipes stay exact
    assert "--rules" in capsys.readouterr().err
