"""A budget is a ceiling (issue 23 item 2) and an inference-aware plan speaks one loss law,
side by side with the compute-optimal plan (item 3)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import byte_token_folder

from cgpt.launch.cli import main
from cgpt.train.plan.devices import get_device
from cgpt.train.plan.inference import DEFAULT_LAW
from cgpt.train.plan.request import PlanRequest, plan


def _json(argv, capsys) -> dict:
    assert main(["plan", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


# ---- item 2: a budget is a ceiling -----------------------------------------------------------
@pytest.mark.parametrize("flops", [3e18, 1e21, 2.3e22])
@pytest.mark.parametrize("convention, key", [("paper", "train_flops"), ("6n", "train_flops_mfu")])
def test_flops_budget_is_a_ceiling_in_its_convention(flops, convention, key, capsys):
    d = _json(["--flops", str(flops), "--flops-convention", convention], capsys)
    assert d[key] <= flops  # cc73e43: 1e21 planned 1.083e21 (paper)
    assert d[key] >= 0.99 * flops  # as close below as whole steps allow
    b = d["budget"]
    assert b["flops"] == flops and b["used_flops"] == d[key]
    assert b["share"] == pytest.approx(d[key] / flops) and b["convention"].startswith(
        {"paper": "paper", "6n": "6N+12LTd"}[convention]
    )
    if b["share"] < 1:  # the rule plans (tokens/param exactly 20) on both sides of the budget
        below, above = b["neighbours"]
        assert below["flops"] <= flops < above["flops"]


def test_gpu_hours_budget_is_a_ceiling(capsys):
    d = _json(["--gpu-hours", "2000", "--gpu", "h100"], capsys)
    assert d["gpu_hours"] <= 2000  # cc73e43: 2,095
    assert d["gpu_hours"] >= 0.99 * 2000 and d["budget"]["gpu_hours"] == 2000
    h100 = get_device("h100")
    assert d["train_flops_mfu"] <= 2000 * 3600 * h100.bf16_flops * 0.4
    # split over GPUs the batch is rounded to the GPU count: still within the budget
    p = plan(PlanRequest(gpu_hours=2000, gpu="h100", gpus=48))
    assert p.global_batch_seqs % 48 == 0 and p.cluster.gpu_hours <= 2000
    p = plan(PlanRequest(flops=1e21, gpus=7, gpu="h100"))
    assert p.global_batch_seqs % 7 == 0 and p.train_flops <= 1e21


def test_plan_and_help_say_the_convention_and_the_share(capsys):
    assert main(["plan", "--flops", "1e21"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("budget"))
    assert "1e+21 FLOPs, paper (algorithmic); this plan uses" in line and "%)" in line
    assert "no exact fit" in out
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "--flops-convention {paper,6n}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plan", "--flops", "1e21", "--flops-convention", "flops"])
    assert e.value.code == 2 and "choose from 'paper', '6n'" in capsys.readouterr().err


# ---- item 3: one loss law per plan, side by side ---------------------------------------------
def test_inference_plan_prints_one_law_side_by_side(tmp_path, capsys):
    argv = ["--flops", "1e21", "--inference-tokens", "1e12"]
    d = _json(argv, capsys)
    sbs = d["inference"]["side_by_side"]
    mine, opt = sbs["inference_aware"], sbs["compute_optimal"]
    law = DEFAULT_LAW
    assert d["predicted_loss"] == mine["predicted_loss"] == law.loss(d["params"], d["tokens"])
    assert d["loss_law"]["form"] == "chinchilla" and d["loss_law"]["E"] == law.E
    ref = plan(PlanRequest(flops=1e21))  # the compute-optimal plan, by the same law
    assert (opt["params"], opt["tokens"]) == (ref.params, ref.tokens)
    assert opt["predicted_loss"] == law.loss(ref.params, ref.tokens)
    assert mine["predicted_loss"] == pytest.approx(opt["predicted_loss"], abs=1e-3)
    for col in (mine, opt):
        assert col["train_flops"] == 6 * col["params"] * col["tokens"]
        assert col["inference_flops"] == 2 * col["params"] * 1e12
        assert col["total_flops"] == col["train_flops"] + col["inference_flops"]
    assert mine["total_flops"] < opt["total_flops"]
    be = sbs["break_even_inference_tokens"]
    assert 6 * mine["params"] * mine["tokens"] + 2 * mine["params"] * be == pytest.approx(
        6 * opt["params"] * opt["tokens"] + 2 * opt["params"] * be
    )
    assert main(["plan", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = {ln[:17].strip(): ln[17:].strip() for ln in lines if not ln.startswith(" ")}
    side = {ln[:17].strip(): ln[17:].strip() for ln in lines if ln.startswith("  ")}
    # cc73e43: "predicted loss 1.783" (the Cerebras law) beside "target loss 2.3083"
    assert head["predicted loss"].startswith(f"{mine['predicted_loss']:.3f} (L = 1.82 + ")
    assert "target loss" not in head["inference-aware"]
    for label in ("N (params)", "D (tokens)", "training FLOPs", "inference FLOPs"):
        assert " | " in side[label], label
    assert side["total FLOPs"] == f"{mine['total_flops']:.3e} | {opt['total_flops']:.3e}"
    loss = f"{mine['predicted_loss']:.4f} | {opt['predicted_loss']:.4f}"
    assert side["predicted loss"] == loss and "break-even" in side
    data = byte_token_folder(tmp_path / "d", 400 * 2048, 4096, vocab_size=50257)
    out = tmp_path / "run.yaml"
    assert main(["plan", *argv, "--data", str(data), "--write", str(out)]) == 0
    written = yaml.safe_load(out.read_text())["plan"]["predicted_loss"]
    assert written == round(mine["predicted_loss"], 4)
