"""configs/cerebras-gpt-*.yaml are the planner's output, byte for byte, and load as run configs."""

from pathlib import Path

import pytest

from cgpt.model import PUBLISHED, GPTConfig
from cgpt.train.config import load_run_config
from cgpt.train.plan.batch import split_batch
from cgpt.train.plan.planner import (
    CONFIG_GPUS,
    config_text,
    plan_published,
    published_run_config,
    slug,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_config_equals_planner(name):
    path = CONFIGS / f"{slug(name)}.yaml"
    assert path.is_file(), (
        f"missing {path}; run python -m cgpt.train.plan.planner --write-configs configs/"
    )
    assert path.read_text() == config_text(name), (
        f"{path} drifted from the planner; regenerate with "
        "python -m cgpt.train.plan.planner --write-configs configs/"
    )
    cfg = load_run_config(path)
    assert cfg == published_run_config(name)
    assert cfg.plan == plan_published(name).plan_section()
    assert cfg.model == GPTConfig.from_name(name)
    for ph in cfg.plan.phases():  # the runtime split works on the node it targets
        split_batch(ph.global_batch_seqs, CONFIG_GPUS, cfg.runtime.micro_batch)
