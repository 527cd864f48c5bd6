"""`cgpt demo`, the main job: its ready config is the planner's, its run-folder choice,
and the whole pipeline end to end in a reduced form (fewer documents, a few steps)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import child_env

from cgpt.launch import demo
from cgpt.train.config import load_run_config

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_a_compute_optimal_plan(tmp_path):
    base = load_run_config(ROOT / "configs" / "demo-cpu.yaml")
    assert demo.DEFAULT_CONFIG == ROOT / "configs" / "demo-cpu.yaml"
    plan, cfg = demo.plan_demo(base, tmp_path, max_steps=None)
    # the file is exactly what the planner gives for its shape at 20 tokens/param
    assert cfg.model == base.model and cfg.plan == base.plan
    rt, want = cfg.runtime.model_dump(), base.runtime.model_dump()
    assert {k: v for k, v in rt.items() if k != "out_dir"} == {
        k: v for k, v in want.items() if k != "out_dir"
    }
    assert plan.params == base.plan.params
    one_batch = base.plan.global_batch_seqs * base.plan.seq_len
    assert 20 * plan.params - one_batch < base.plan.tokens <= 20 * plan.params
    assert cfg.data.path == str(tmp_path / "data") and cfg.runtime.wandb == "offline"


def _fake_run(folder: Path, status: str | None, cfg=None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()) if cfg else "{}\n")
    if status:
        (folder / "summary.json").write_text(json.dumps({"status": status}))


def test_run_folder_choice(tmp_path):
    base = load_run_config(ROOT / "configs" / "demo-cpu.yaml")
    _, cfg = demo.plan_demo(base, tmp_path, None)
    assert demo.choose_run_dir(tmp_path, cfg, False) == (tmp_path / "run", False)
    _fake_run(tmp_path / "run", "completed", cfg)
    assert demo.choose_run_dir(tmp_path, cfg, False) == (tmp_path / "run-2", False)
    _fake_run(tmp_path / "run-2", None, cfg)  # interrupted: continue it
    assert demo.choose_run_dir(tmp_path, cfg, False) == (tmp_path / "run-2", True)
    assert demo.choose_run_dir(tmp_path, cfg, True) == (tmp_path / "run-3", False)
    _fake_run(tmp_path / "run-3", "stopped")  # another plan: never resumed into
    assert demo.choose_run_dir(tmp_path, cfg, False) == (tmp_path / "run-4", False)


def _demo(out: Path, *extra: str) -> str:
    env = child_env()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgpt.launch",
            "demo",
            "--out",
            str(out),
            "--corpus-docs",
            "60",
            "--max-steps",
            "3",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_demo_end_to_end_reduced(tmp_path):
    out = tmp_path / "demo"
    text = _demo(out)
    for n in range(1, demo.STEPS + 1):
        assert f"[{n}/{demo.STEPS}]" in text
    run = out / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert (run / "loss.png").stat().st_size > 0
    assert (run / "hf" / "config.json").is_file() and (run / "hf" / "model.safetensors").is_file()
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    for path in (run / "loss.png", run / "metrics.jsonl", run / "hf", wandb_runs[0]):
        assert str(path) in text  # the closing summary names every output
    # the export, run by transformers, scores what the trainer measured on the same batches
    m = re.search(r"val loss ([\d.]+) \(trainer: ([\d.]+)\)", text)
    hf_loss, trainer_loss = float(m.group(1)), float(m.group(2))
    assert abs(hf_loss - trainer_loss) < 1e-3 and hf_loss < math.log(1024)
    assert re.search(r"sample:\n\s+\| def ", text)

    again = _demo(out)  # idempotent: reuses the tokenizer and shards, continues the run
    assert "reused " + str(out / "tokenizer") in again and "reused " + str(out / "data") in again
    assert "resuming" in again and not (out / "run-2").exists()
