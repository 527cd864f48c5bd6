import pytest

from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.config import apply_overrides, load_run_config, parse_run_config
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.schedule import lr_at, tokens_before


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


# ---------------------------------------------------------------------------- issue 26 13, 14
def _refused(d: dict, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        parse_run_config(d)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_adam_betas_outside_0_1_are_refused_before_torch():
    d = apply_overrides(_cfg(), ["plan.adam_betas=[0.9,2.0]"])
    _refused(d, r"plan.adam_betas: Value error, each beta must be in \[0, 1\), got \[0.9, 2.0\]")
    _refused(apply_overrides(_cfg(), ["plan.adam_betas=[-0.1,0.95]"]), "each beta must be in")
    ok = parse_run_config(apply_overrides(_cfg(), ["plan.adam_betas=[0.0,0.999]"]))
    assert ok.plan.adam_betas == (0.0, 0.999)


def test_binary_run_config_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_bytes(b"model:\n  n_layer: \xff\xfe\x00\x01\n")
    with pytest.raises(ConfigError, match=r"not a text file \(byte 0xff at offset 18"):
        load_run_config(tmp_path)  # a run folder: its config.yaml
    with pytest.raises(ConfigError, match="not a text file"):
        load_run_config(tmp_path / "config.yaml")


def test_warmup_longer_than_the_run_is_refused():
    d = _cfg()
    d["plan"]["warmup_steps"] = 10**20
    _refused(d, r"warmup_steps \(100000000000000000000\) is longer than the run \(steps 10\)")
    d["plan"]["warmup_steps"] = 10  # the peak at the last step: allowed
    assert parse_run_config(d).plan.warmup_steps == 10
    d["plan"]["batch_schedule"] = [
        {"global_batch_seqs": 10, "steps": 5, "warmup_steps": 2, "decay_steps": 8},
        {"global_batch_seqs": 20, "steps": 5, "warmup_steps": 11, "decay_steps": 8,
         "schedule_start_step": 5},
    ]  # fmt: skip
    _refused(d, r"batch_schedule\[1\].warmup_steps \(11\) is longer than the phase's schedule")


@pytest.mark.parametrize(
    "key", ["runtime.keep_last", "runtime.save_every", "runtime.max_steps", "plan.warmup_steps"]
)
def test_true_is_not_an_integer(key):
    d = apply_overrides(_cfg(), [f"{key}=true"])
    _refused(d, f"{key}: Value error, expected an integer, got true")
    assert parse_run_config(apply_overrides(_cfg(), [f"{key}=2"]))  # an int still is


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_names_starting_with_a_dot_are_refused(name):
    d = _cfg()
    d["data"] = {"sources": [{"name": name, "path": "a", "weight": 1.0}]}
    _refused(d, f"source name {name!r}: use letters, digits, _ . -, not starting with '.'")
    d["data"] = {"path": "a", "val": {name: "b"}}
    _refused(d, "data.val names may use letters, digits, _ . -, not starting with '.'")
    d["data"] = {"sources": [{"name": "web.v2", "path": "a", "weight": 1.0}]}
    assert parse_run_config(d).data.sources[0].name == "web.v2"
