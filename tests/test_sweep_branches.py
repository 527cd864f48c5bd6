"""Sweeps with cooldown branches (``branches: {at: [...]}``): one warmup-stable-decay run
per size and a branch per smaller token multiple. A branch equals, bitwise, the dedicated
WSD point of its tokens; the loss law is fitted on the 1x points and L(N, D) on all; a
killed sweep resumes to the same numbers; bad specs are one line and write nothing."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import losses, make_sweep_data, sweep_dict, write_sweep

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError
from cgpt.train.config import RuntimeSection
from cgpt.train.sweeps.sweep import fit_sweep_dir, load_sweep, parse_sweep, plan_points, run_sweep

SIZE = {"n_layer": 1, "n_embd": 16, "n_head": 2}  # 7,936 parameters at vocab 257
PARAMS, BATCH_TOKENS = 7936, 8 * 32
# tokens_per_param 2: the x1 point has 15,872 tokens = 62 steps of 256 tokens, x0.5 31 steps,
# x2 124 steps; a 20% cooldown starts at 31 - round(6.2) = 25 and 62 - round(12.4) = 50
STEPS = {0.5: 31, 1: 62, 2: 124}
STARTS = {0.5: 25, 1: 50}


def branch_dict(tmp: Path, data: Path, out: str = "sweep", **kw) -> dict:
    d = sweep_dict(tmp, data, out_dir=str(tmp / out), tokens_per_param=2, **kw)
    d["sizes"] = [dict(SIZE)]
    d["plan"].update(decay="wsd", warmup_tokens_per_param=0.25)  # 8 warmup steps
    d["branches"] = {"at": [0.5, 1, 2]}
    d["runtime"]["save_every"] = 0  # only the branch steps and the end
    return d


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["name"]: r for r in map(json.loads, lines)}


def _digest(folder: Path) -> dict:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_sweep_data(tmp_path_factory.mktemp("data") / "bytes")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data) -> Path:
    """The branch sweep, run once without interruption (3 trainings)."""
    tmp = tmp_path_factory.mktemp("swept")
    path = write_sweep(tmp, branch_dict(tmp, data))
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    return tmp / "sweep"


@pytest.mark.slow  # 4 short trainings (the fixture's 3 and one dedicated point)
def test_branch_records_and_equality_with_the_dedicated_point(swept, data, tmp_path):
    recs = _records(swept)
    stable, name = recs.pop("L1-d16-h2-x2"), "L1-d16-h2-x2"
    assert stable["status"] == "ok" and stable["branch_of"] is None
    assert stable["tokens_multiple"] == 2 and stable["steps"] == STEPS[2]
    assert stable["cost_flops"] == stable["flops"] > 0
    assert set(recs) == {"L1-d16-h2-x0.5", "L1-d16-h2-x1"}
    for m, r in ((0.5, recs["L1-d16-h2-x0.5"]), (1, recs["L1-d16-h2-x1"])):
        assert r["status"] == "ok" and np.isfinite(r["val_loss"])
        assert (r["branch_of"], r["tokens_multiple"], r["branch_step"]) == (name, m, STARTS[m])
        assert r["steps"] == STEPS[m] and r["tokens"] == STEPS[m] * BATCH_TOKENS
        # training FLOPs as if alone; the sweep paid only for the cooldown steps
        assert r["cost_flops"] == pytest.approx(r["flops"] * (STEPS[m] - STARTS[m]) / STEPS[m])
        assert r["tokens_per_param"] == pytest.approx(STEPS[m] * BATCH_TOKENS / PARAMS)
    # the stable run saved exactly at the branch steps and its end (save_every: 0)
    runs = swept / "runs"
    assert sorted(p.name for p in (runs / name / "checkpoints").glob("step-*")) == [
        "step-124",
        "step-25",
        "step-50",
    ]
    rt = yaml.safe_load((runs / name / "config.yaml").read_text())["runtime"]
    assert rt["save_steps"] == [25, 50]
    rt = yaml.safe_load((runs / "L1-d16-h2-x0.5" / "config.yaml").read_text())["runtime"]
    assert "save_steps" not in rt  # an empty list is left out of the YAML
    # the dedicated WSD point of the x0.5 branch's tokens, from scratch, in its own sweep
    d = branch_dict(tmp_path, data, out="dedicated")
    del d["branches"]
    d["tokens_per_param"] = (STEPS[0.5] + 0.5) * BATCH_TOKENS / PARAMS
    assert cli(["sweep", str(write_sweep(tmp_path, d)), "--no-fit"]) == 0
    ded = _records(tmp_path / "dedicated")["L1-d16-h2"]
    assert ded["steps"] == STEPS[0.5] and ded["branch_of"] is None
    assert ded["val_loss"] == recs["L1-d16-h2-x0.5"]["val_loss"]  # bitwise
    assert losses(tmp_path / "dedicated" / "runs" / "L1-d16-h2") == losses(runs / "L1-d16-h2-x0.5")


@pytest.mark.slow  # a killed sweep and its resumption: 4 short trainings
def test_killed_sweep_resumes_to_the_same_numbers(swept, data, tmp_path, capsys):
    path = write_sweep(tmp_path, branch_dict(tmp_path, data))
    out, stable = tmp_path / "sweep", "L1-d16-h2-x2"
    first = out / "runs" / stable / "checkpoints" / "step-25" / "complete"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cgpt.launch", "sweep", str(path), "--no-fit"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process
        proc.wait()
    assert first.exists() and not (out / "runs" / stable / "summary.json").exists()
    # as if the kill had come just after the x0.5 branch was made (branch.json, no summary),
    # and while the x1 branch was being made (no branch.json): the first resumes, the second
    # is made again; the stable run resumes from its checkpoint
    from cgpt.train.sweeps.branches import prepare_branch

    points = {p.name: p for p in plan_points(load_sweep(path), 257)}
    assert prepare_branch(points["L1-d16-h2-x0.5"], points[stable]) is None
    assert (out / "runs" / "L1-d16-h2-x0.5" / "branch.json").is_file()
    half = out / "runs" / "L1-d16-h2-x1"
    half.mkdir()
    (half / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    capsys.readouterr()
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    assert "L1-d16-h2-x1: made from" in capsys.readouterr().out
    assert "resumed from" in (out / "logs" / f"{stable}.log").read_text()
    log = (out / "logs" / "L1-d16-h2-x0.5.log").read_text()
    assert "--resume" in log and "resumed from" in log
    want = {n: r["val_loss"] for n, r in _records(swept).items()}
    assert {n: r["val_loss"] for n, r in _records(out).items()} == want  # bitwise

    # a branch whose stable checkpoint is gone: one line, nothing trained
    shutil.rmtree(out / "runs" / "L1-d16-h2-x1")
    shutil.rmtree(out / "runs" / stable / "checkpoints" / "step-50")
    capsys.readouterr()
    assert cli(["sweep", str(path), "--no-fit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint step-50" in err and "is gone" in err, err
    assert not (out / "runs" / "L1-d16-h2-x1").exists()


def _chinchilla_loss(n, d):
    # typed in again: E + A/N^alpha + B/D^beta with E 1.8, A 400, alpha 0.34, B 400, beta 0.28
    return 1.8 + 400 / n**0.34 + 400 / d**0.28


def test_fit_uses_the_1x_points_for_the_law_and_every_branch_for_chinchilla(tmp_path, capsys):
    out = tmp_path / "fake"
    out.mkdir()
    (out / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "fake", "kind": "tokens_per_param", "tokens_per_param": 20})
    )
    recs = []
    for i, n in enumerate([1e4, 3e4, 1e5, 3e5]):
        for m in (0.5, 1, 2, 4):
            d = 20 * n * m
            recs.append(
                {
                    "name": f"s{i}-x{m:g}",
                    "status": "ok",
                    "params": n,
                    "tokens": d,
                    "flops": 6 * n * d,
                    "cost_flops": 6 * n * d * (1 if m == 4 else 0.2),
                    "val_loss": _chinchilla_loss(n, d),
                    "tokens_multiple": m,
                    "branch_of": None if m == 4 else f"s{i}-x4",
                    "data_id": "A",
                }
            )
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    fit = fit_sweep_dir(out, n_boot=0, log=lambda m: None)
    law = fit["loss_law"]
    assert [f["name"] for f in law["frontier"]] == ["s0-x1", "s1-x1", "s2-x1", "s3-x1"]
    assert law["n_points"] == 4
    ch = fit["chinchilla"]
    assert ch["n_points"] == 16  # at one ratio alone L(N, D) cannot be fitted at all
    assert ch["alpha"] == pytest.approx(0.34, rel=0.05) and ch["E"] == pytest.approx(1.8, rel=0.05)
    assert fit["branches"]["loss_law_points"] == [f"s{i}-x1" for i in range(4)]
    total = sum(r["flops"] for r in recs)
    assert fit["branches"]["flops"] == pytest.approx(total)
    assert fit["branches"]["cost_flops"] == pytest.approx(sum(r["cost_flops"] for r in recs))
    from cgpt.train.sweeps.sweep import summarize_fit

    assert any(line.startswith("branches: the loss law is fitted on the 4") for line in
               summarize_fit(fit))  # fmt: skip


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"branches": {"at": [0, 1]}}, "positive multiples"),
        ({"branches": {"at": [-1, 1]}}, "positive multiples"),
        ({"branches": {"at": [1, 2, 2]}}, "twice"),
        ({"branches": {"at": [0.5, 2]}}, "must include 1"),
        ({"branches": {"at": [1, 2], "cooldown_fraction": 1.0}}, "in (0, 1)"),
        ({"branches": {"at": [1, 2], "cooldown_fraction": 0}}, "in (0, 1)"),
        ({"plan": {"decay": "linear"}}, "branches need plan.decay: wsd"),
        ({"plan": {"decay": None}}, "branches need plan.decay: wsd"),
        ({"plan": {"warmup_tokens_per_param": None}}, "warmup_tokens_per_param"),
        (
            {"plan": {"cooldown_fraction": 0.3}, "branches": {"at": [1], "cooldown_fraction": 0.2}},
            "differs from plan.cooldown_fraction",
        ),  # fmt: skip
        ({"isoflop": {"budgets": [1e9], "sizes": [SIZE]}}, "need a tokens_per_param sweep"),
        ({"plan": {"warmup_tokens_per_param": 1}}, "inside the warmup"),  # 31 steps
        ({"branches": {"at": [1, 1.01]}}, "not before the stable run"),
    ],
)
def test_bad_branch_specs_are_one_line_and_write_nothing(tmp_path, data, capsys, change, needle):
    d = branch_dict(tmp_path, data)
    for key, value in change.items():
        if key == "plan":
            d["plan"].update(value)
        else:
            d[key] = value
    if "isoflop" in change:
        del d["sizes"], d["tokens_per_param"]
    path = write_sweep(tmp_path, d)
    before = _digest(tmp_path)
    capsys.readouterr()
    for argv in (["sweep", str(path)], ["sweep", str(path), "--dry-run"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert _digest(tmp_path) == before


def test_a_changed_branch_spec_is_refused(tmp_path, data):
    d = branch_dict(tmp_path, data)
    out = tmp_path / "sweep"
    out.mkdir()
    old = parse_sweep(d).model_dump(mode="json")
    (out / "sweep.yaml").write_text(yaml.safe_dump({**old, "kind": "tokens_per_param"}))
    before = _digest(out)
    for at in ([0.5, 1, 4], [1, 2]):
        d["branches"] = {"at": at}
        with pytest.raises(CgptError, match=r"was run with branches .*the sweep file now says"):
            run_sweep(write_sweep(tmp_path, d), log=lambda m: None)
    d["branches"] = {"at": [0.5, 1, 2], "cooldown_fraction": 0.25}
    with pytest.raises(CgptError, match="was run with branches"):
        run_sweep(write_sweep(tmp_path, d), log=lambda m: None)
    assert _digest(out) == before


def test_dry_run_lists_stable_runs_branches_and_costs(tmp_path, data, capsys):
    path = write_sweep(tmp_path, branch_dict(tmp_path, data))
    before = _digest(tmp_path)
    assert cli(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "L1-d16-h2-x2" in out and "stable run; checkpoints at steps [25, 50]" in out
    assert "branch of L1-d16-h2-x2 from step 25" in out and "from step 50" in out
    # costs: all of the stable run; each branch its cooldown (6 and 12 steps of 31 and 62)
    total = sum(STEPS.values())
    spent = STEPS[2] + (STEPS[0.5] - STARTS[0.5]) + (STEPS[1] - STARTS[1])
    assert "1 stable runs, 2 branches" in out and f"{spent / total:.0%} of the" in out
    assert _digest(tmp_path) == before


def test_decay_and_branches_with_lr_tuned_and_mup(tmp_path, data):
    for decay, fraction in (("cosine", None), ("wsd", 0.3), ("wsd", None)):
        d = sweep_dict(tmp_path, data)
        d["plan"]["decay"] = decay
        if fraction:
            d["plan"]["cooldown_fraction"] = fraction
        for p in plan_points(parse_sweep(d), 257):
            assert p.cfg.plan.decay == decay
            want = (fraction or 0.2) if decay == "wsd" else None
            assert p.cfg.plan.cooldown_fraction == want
    with pytest.raises(CgptError, match="cooldown_fraction goes with plan.decay: wsd"):
        parse_sweep(sweep_dict(tmp_path, data, plan={"lr": 1e-3, "cooldown_fraction": 0.2,
                                                     "global_batch_seqs": 8}))  # fmt: skip
    # lr: tuned: every trial has its own stable run and branches, grouped per multiple
    pts = plan_points(parse_sweep(branch_dict(tmp_path, data, lr="tuned", lr_grid=[1, 2])), 257)
    assert [p.name for p in pts] == [
        "L1-d16-h2-x2-lrx1",
        "L1-d16-h2-x0.5-lrx1",
        "L1-d16-h2-x1-lrx1",
        "L1-d16-h2-x2-lrx2",
        "L1-d16-h2-x0.5-lrx2",
        "L1-d16-h2-x1-lrx2",
    ]
    assert [p.group for p in pts[:3]] == ["L1-d16-h2-x2", "L1-d16-h2-x0.5", "L1-d16-h2-x1"]
    assert [p.branch_of for p in pts[3:]] == [None, "L1-d16-h2-x2-lrx2", "L1-d16-h2-x2-lrx2"]
    assert pts[4].cfg.plan.lr == pts[3].cfg.plan.lr == 2 * pts[0].cfg.plan.lr
    # lr: mup: the μP model in the stable run and its branches alike
    m = branch_dict(tmp_path, data, lr="mup")
    m["plan"]["lr_base_width"] = 8
    pts = plan_points(parse_sweep(m), 257)
    assert all(p.cfg.model.mup is not None and p.cfg.model == pts[0].cfg.model for p in pts)
    assert [p.cfg.plan.decay for p in pts] == ["wsd"] * 3


def test_runtime_save_steps():
    assert "save_steps" not in RuntimeSection().model_dump()  # older configs compare equal
    assert RuntimeSection(save_steps=[5, 9]).model_dump()["save_steps"] == [5, 9]
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RuntimeSection(save_steps=[0])


def test_ready_wsd_config_plans():
    """configs/sweep-cpu-wsd.yaml: the sizes of sweep-cpu.yaml, each one stable run to 2x the
    planned tokens with branches at 0.5x and 1x, cheaper than dedicated runs."""
    root = Path(__file__).parents[1] / "configs"
    sweep = load_sweep(root / "sweep-cpu-wsd.yaml")
    points = plan_points(sweep, 512)
    plain = load_sweep(root / "sweep-cpu.yaml")
    shapes = {(s.n_layer, s.n_embd, s.n_head) for s in plain.sizes or []}
    assert {(p.cfg.model.n_layer, p.cfg.model.n_embd, p.cfg.model.n_head) for p in points} == shapes
    assert sorted(sweep.branches.at) == [0.5, 1, 2] and len(points) == 3 * len(shapes)
    stable = [p for p in points if p.branch_of is None]
    assert len(stable) == len(shapes) and all(p.tokens_multiple == 2 for p in stable)
    for p in points:
        assert p.cfg.plan.decay == "wsd" and p.cfg.plan.steps >= sweep.plan.min_steps
    cost, alone = sum(p.cost_flops() for p in points), sum(p.flops() for p in points)
    assert cost < 0.75 * alone
