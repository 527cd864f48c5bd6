"""Defaults that run well (issue 23 item 8): a plan without a cluster writes the largest
micro-batch that divides the global batch and fits this machine's memory (the planner's
memory model, cgpt.train.plan.memory), and says what it picked."""

from __future__ import annotations

import json

import yaml
from helpers import byte_token_folder

from cgpt.launch.cli import main
from cgpt.train.config import load_run_config
from cgpt.train.plan.memory import MEMORY_FRACTION, estimate_memory
from cgpt.train.plan.request import PlanRequest, plan

SHAPE = dict(layers=2, width=64, seq_len=64, batch_seqs=32)


def test_micro_batch_is_the_largest_that_divides_and_fits():
    big = plan(PlanRequest(**SHAPE, memory_bytes=1 << 40))
    assert big.local.micro_batch == 32  # cc73e43: no choice, 1 in the YAML
    cfg = big.model
    need = {mb: estimate_memory(cfg, 64, mb, 1, 1, False).total for mb in (4, 8)}
    between = int((need[4] + need[8]) / 2 / MEMORY_FRACTION)  # fits 4, not 8
    small = plan(PlanRequest(**SHAPE, memory_bytes=between))
    local = small.local
    assert local.micro_batch == 4 and local.grad_accum == (8,)
    assert local.memory_bytes == need[4] and local.chosen
    assert small.to_run_config("data/x").runtime.micro_batch == 4
    asked = plan(PlanRequest(**SHAPE, micro_batch=2, memory_bytes=between))
    assert asked.local.micro_batch == 2 and not asked.local.chosen


def test_cli_writes_and_says_the_micro_batch(tmp_path, capsys):
    data = byte_token_folder(tmp_path / "d", 40_000, 2_000)
    argv = ["plan", "--layers", "2", "--width", "64", "--seq-len", "64", "--batch-seqs", "32"]
    argv += ["--data", str(data)]
    assert main([*argv, "--json"]) == 0
    mb = json.loads(capsys.readouterr().out)["local"]["micro_batch"]
    assert mb > 1 and 32 % mb == 0
    run = tmp_path / "run.yaml"
    assert main([*argv, "--write", str(run)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("micro-batch"))
    assert f"{mb} × grad accum {32 // mb} on one rank (the largest that divides" in row
    assert yaml.safe_load(run.read_text())["runtime"]["micro_batch"] == mb
    assert load_run_config(run).runtime.micro_batch == mb
