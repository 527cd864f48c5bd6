"""Checkpoint folder rules (publish marker, pruning) and RNG round trips."""

from __future__ import annotations

import random

import numpy as np
import torch

from cgpt.train.checkpoints import checkpoint as ckpt


def _fake(root, name, complete=True, state=True):
    p = root / name
    p.mkdir(parents=True)
    if complete:
        (p / ckpt.COMPLETE).write_text("x")
    if state:
        (p / ckpt.STATE).write_text("{}")
    return p


def test_only_complete_published_folders_count(tmp_path):
    _fake(tmp_path, "step-5")
    _fake(tmp_path, "step-20")
    _fake(tmp_path, "step-30", complete=False)  # marker missing: not resumable
    _fake(tmp_path, "step-40", state=False)
    _fake(tmp_path, "tmp-step-50")  # an interrupted save
    _fake(tmp_path, "step-x")
    assert [s for s, _ in ckpt.published(tmp_path)] == [5, 20]  # numeric, not string order
    assert ckpt.newest(tmp_path)[0] == 20
    assert ckpt.newest(tmp_path / "missing") is None


def test_prune_keeps_last_k_and_drops_stale_tmp(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3):
        _fake(root, f"step-{s}")
    _fake(root, "tmp-step-9", complete=False)
    c = ckpt.Checkpointer(tmp_path, keep_last=2, rank=0)
    c._prune()
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    want = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2:] == got[2:]


def test_trust_switch_hands_loading_back_to_deepspeed(tmp_path, monkeypatch):
    from cgpt.train.checkpoints.checkpoint import TRUST_ENV, _WeightsOnlyLoads

    class Inner:
        name = "TorchCheckpointEngine"

        def load(self, path, map_location=None):
            return ("inner", path)

    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    wrapped = _WeightsOnlyLoads(Inner())
    assert wrapped.name == "TorchCheckpointEngine"  # everything else is DeepSpeed's
    assert torch.equal(wrapped.load(str(tmp_path / "a.pt"))["w"], torch.ones(2))
    monkeypatch.setenv(TRUST_ENV, "1")
    assert wrapped.load("x.pt") == ("inner", "x.pt")
