import pytest

from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.config import apply_overrides, load_run_config, parse_run_config
from cgpt.train.loop.schedule import lr_at, tokens_before
from cgpt.train.plan.batch import split_batch


def _cfg(**runtime):
    return {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100, "n_positions": 16},
        "data": {"path": "data"},
        "plan": {
            "params": 1,
            "seq_len": 16,
            "tokens": 1600,
            "steps": 10,
            "global_batch_seqs": 10,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 2,
            "decay_steps": 8,
        },
        "runtime": runtime,
    }


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match="did you mean 'micro_batch'"):
        parse_run_config(_cfg(micro_bach=2))


def test_overrides_keep_yaml_boolean_words():
    d = apply_overrides(_cfg(), ["wandb=off", "runtime.micro_batch=5", "plan.lr=0.002"])
    cfg = parse_run_config(d)
    assert cfg.runtime.wandb == "off" and cfg.runtime.micro_batch == 5 and cfg.plan.lr == 0.002
    cfg = parse_run_config(apply_overrides(_cfg(), ["compile=on"]))
    assert cfg.runtime.compile is True


def test_bad_yaml_is_one_clear_error(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


def test_linear_schedule_endpoints():
    plan = parse_run_config(_cfg()).plan
    assert lr_at(plan, 0) == pytest.approx(0.5e-3)  # warmup 1/2
    assert lr_at(plan, 1) == pytest.approx(1e-3)  # peak at the last warmup step
    assert lr_at(plan, 9) == pytest.approx(1e-4)  # 10% of peak at the last step
    assert tokens_before(plan, 10) == 10 * 10 * 16


def test_batch_rule_multiplies_out_and_explains_failures():
    s = split_batch(120, 8, 3)
    assert s.micro_batch * s.grad_accum * s.data_parallel == 120
    with pytest.raises(CgptError, match="cannot be split over 7"):
        split_batch(120, 7, 1)
    with pytest.raises(CgptError, match="feasible micro-batches"):
        split_batch(120, 8, 4)
