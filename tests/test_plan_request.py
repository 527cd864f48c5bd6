"""The planner as a library (issue 25): a Plan's provenance is typed fields, not a free-form
dict; PlanRequest takes typed values (the data section's fields, not `--data` text) and its
refusals name its fields; `cgpt plan` parses the flags and names them in the same message."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import byte_token_folder

from cgpt.launch.cli import main
from cgpt.launch.cmd_plan import flag_of
from cgpt.train.checks import FieldError
from cgpt.train.plan.request import PlanRequest, plan
from cgpt.train.plan.result import Budget, LocalFit

ROOT = Path(__file__).resolve().parents[1]


def test_provenance_is_typed_fields_in_the_json_order_of_before(capsys):
    p = plan(PlanRequest(gpu_hours=2000, gpu="h100", memory_bytes=1 << 40))
    assert not hasattr(p, "extra")
    assert isinstance(p.budget, Budget) and (p.budget.gpu, p.budget.gpu_hours) == ("h100", 2000)
    assert p.budget.share <= 1 and p.budget.neighbours
    assert isinstance(p.local, LocalFit) and p.local.chosen
    assert (p.recipe, p.param_count) == ("cerebras", "total")
    assert main(["plan", "--gpu-hours", "2000", "--gpu", "h100", "--json"]) == 0
    keys = list(json.loads(capsys.readouterr().out))
    after_notes = keys[keys.index("notes") + 1 :]
    # cc73e43's order (extra's insertion order), so the printed JSON is unchanged
    assert after_notes[:5] == ["recipe", "param_count", "counted_params", "budget", "local"]


@pytest.mark.parametrize(
    "request_, library, cli",
    [
        (
            dict(params=4e8, batch_seqs=0),
            "batch_seqs must be a positive integer, got 0",
            "--batch-seqs must be a positive integer, got 0",
        ),
        (
            dict(size="111M", params=4e8),
            "give exactly one of size, params, layers/width, flops, gpu_hours (got size, params)",
            "give exactly one of SIZE, --params, --layers/--width, --flops, --gpu-hours "
            "(got SIZE, --params)",
        ),
        (  # the cluster's advice (cgpt.train.plan.cluster), deeper in the planner
            dict(size="111M", gpus=7, gpu="h100"),
            "111M's global batch 120 cannot be split over 7 data-parallel ranks; use gpus 5 or "
            "gpus 6 or gpus 8, or keep 7 ranks with rules batch_seqs 119 or rules batch_seqs 126",
            "111M's global batch 120 cannot be split over 7 data-parallel ranks; use --gpus 5 or "
            "--gpus 6 or --gpus 8, or keep 7 ranks with --rules --batch-seqs 119 or --rules "
            "--batch-seqs 126",
        ),
        (
            dict(params=4e8, gpus=3, nodes=2, gpus_per_node=4, gpu="h100"),
            "gpus 3 disagrees with nodes × gpus_per_node = 8",
            "--gpus 3 disagrees with --nodes × --gpus-per-node = 8",
        ),
    ],
)
def test_the_library_names_fields_and_the_cli_its_flags(request_, library, cli, capsys):
    with pytest.raises(FieldError) as e:
        plan(PlanRequest(**request_))
    assert str(e.value) == library
    assert e.value.spelled(flag_of) == cli
    argv = ["plan"]
    for field, value in request_.items():
        argv += [value] if field == "size" else [flag_of(field), str(value)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"cgpt plan: error: {cli}\n"


def test_every_request_field_is_a_flag_of_cgpt_plan(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    shown = set(re.findall(r"--[a-z-]+|SIZE", capsys.readouterr().out))
    # memory_bytes: the library's own (tests, other front ends); the CLI probes this machine
    names = [f.name for f in fields(PlanRequest) if f.name != "memory_bytes"]
    assert [n for n in names if flag_of(n) not in shown] == []


def test_the_request_takes_the_data_sections_fields(tmp_path):
    data = byte_token_folder(tmp_path / "d=1", 40_000, 2_000)  # a folder whose name has '='
    shape = dict(layers=2, width=64, seq_len=64, batch_seqs=32)
    mix = {"sources": [{"name": "a", "path": str(data), "weight": 1.0}]}
    p = plan(PlanRequest(**shape, data=mix))
    assert p.data == {"sources": [{"name": "a", "path": str(data.resolve()), "weight": 1.0}]}
    one = plan(PlanRequest(**shape, data=str(data)))  # a folder is a folder, never parsed
    assert one.data == {"path": str(data.resolve())}
    assert one.to_run_config(str(data)).data.path == str(data)


def test_the_planner_parses_no_command_line():
    """No module of the planner imports the CLI's parsing (cgpt.launch.args) or the old
    train/cli_args, which moved there."""
    assert not (ROOT / "train" / "cli_args.py").exists()
    for f in (ROOT / "train" / "plan").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").endswith(("cli_args", "launch.args")), f


@pytest.mark.parametrize(
    "module",
    [
        "train/plan",
        "launch/slurm.py",
        "launch/cmd_launch.py",
        "launch/cmd_plan.py",
        "launch/plan_table.py",
        "launch/launchers.py",
    ],
)
def test_planner_and_launch_functions_are_short(module):
    """Functions over ~80 lines were split into named steps (issue 25)."""
    path = ROOT / module
    for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, (f.name, node.name)
