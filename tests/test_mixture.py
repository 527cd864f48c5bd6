"""Data mixtures (cgpt.train.data.mixture): the weighted schedule's proportions, each source's
own window order and epochs, exact and elastic resume, tokenizer and weight checks, several
validation sets in the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.config import parse_run_config
from cgpt.train.data import loader as loader_mod
from cgpt.train.data.loader import TokenLoader
from cgpt.train.data.mixture import (
    MAX_PERIOD,
    MixtureLoader,
    MixtureSchedule,
    ValSets,
    integer_weights,
    open_data,
    source_seed,
)
from cgpt.train.data.shards import write_token_data

SEQ = 8
VOCAB = 4000
BASE = {"a": 0, "b": 1000, "c": 2000}  # each source's tokens in its own range
WINDOWS = {"a": 60, "b": 25, "c": 7}


@pytest.fixture(autouse=True)
def _fresh_repeat_notices(monkeypatch):
    """The repeat notice is once per source per process: each test starts afresh."""
    monkeypatch.setattr(loader_mod, "REPEATS_SHOWN", set())


def _write(folder, base, n_windows, fp="tok-1", val_windows=4, text_bytes=None):
    train = base + np.arange(n_windows * SEQ + 1) % 1000
    val = base + (np.arange(val_windows * SEQ + 1) + 3) % 1000
    write_token_data(
        folder, train, val, vocab_size=VOCAB, eos_id=VOCAB - 1, tokenizer_fingerprint=fp
    )
    return folder


@pytest.fixture
def folders(tmp_path):
    return {n: _write(tmp_path / n, BASE[n], WINDOWS[n]) for n in BASE}


def _section(folders, weights=(0.7, 0.2, 0.1), val=None):
    d = {
        "sources": [
            {"name": n, "path": str(folders[n]), "weight": w} for n, w in zip(folders, weights)
        ]
    }
    if val:
        d["val"] = val
    return d


def _rows(batches) -> np.ndarray:
    """(rows, SEQ+1) windows of one step's micro-batches."""
    return np.concatenate(
        [np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1) for x, y in batches]
    )


def _source_of(rows) -> np.ndarray:
    return rows[:, 0] // 1000


# ---------------------------------------------------------------------------- schedule
def test_integer_weights():
    assert integer_weights([0.7, 0.2, 0.1]) == [7, 2, 1]
    assert integer_weights([3, 3]) == [1, 1]
    assert integer_weights([0.25, 0.75]) == [1, 3]
    big = integer_weights([1 / 3, 1 / 3, 1 / 3, 1e-9])
    assert sum(big) == MAX_PERIOD and min(big) == 1
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(CgptError):
            integer_weights([0.5, bad])


@pytest.mark.parametrize(
    "weights", [(0.7, 0.2, 0.1), (0.5, 0.25, 0.125, 0.125), (0.97, 0.01, 0.01, 0.01), (1, 2)]
)
def test_proportions_within_rounding_over_many_steps(weights):
    s = MixtureSchedule(list(weights))
    K, w = len(weights), s.a / s.period
    np.testing.assert_allclose(w, np.array(weights) / sum(weights))
    n = 20_000  # positions: 1250 steps of 16 sequences
    src, sample = s.assign(0, n)
    onehot = np.eye(K, dtype=np.int64)[src]
    c = np.vstack([np.zeros(K, np.int64), np.cumsum(onehot, axis=0)])
    p = np.arange(n + 1)[:, None]
    assert (np.abs(c - p * w) <= 0.5 + w * K / 2 + 1e-9).all()  # every prefix
    for G in (1, 7, 16, 64, 1000):  # every window of G sequences, anywhere
        dev = np.abs(c[G:] - c[:-G] - G * w)
        assert (dev <= 1 + w * K + 1e-9).all(), (G, dev.max())
    # counts() agrees with the schedule, and each source's samples are numbered 0, 1, 2 ...
    for P in (0, 1, 13, 999, n):
        assert (s.counts(P) == c[P]).all()
    for k in range(K):
        assert (sample[src == k] == np.arange(c[n, k])).all()
    if weights == (0.7, 0.2, 0.1):  # exactly 7/2/1 of every 10
        assert (c[10::10] == np.outer(np.arange(1, n // 10 + 1), [7, 2, 1])).all()


def test_loader_proportions_and_each_source_in_its_own_order(folders):
    mix = open_data(_section(folders))
    ld = MixtureLoader(mix, SEQ, seed=5)
    G, steps = 10, 40
    seen = {k: [] for k in range(3)}
    for _ in range(steps):
        rows = _rows(ld.next_step(G, 5))
        src = _source_of(rows)
        assert np.bincount(src, minlength=3).tolist() == [7, 2, 1]  # exact per step
        for k in range(3):
            seen[k] += (rows[src == k, 0] % 1000 // SEQ).tolist()
    for k, name in enumerate(BASE):
        own = TokenLoader(folders[name], SEQ, seed=source_seed(5, name))
        assert seen[k] == own.indices_at(0, len(seen[k])).tolist()  # its own Feistel order
        n = WINDOWS[name]
        for e in range(len(seen[k]) // n):  # every epoch a permutation of its windows
            assert sorted(seen[k][e * n : (e + 1) * n]) == list(range(n))
    st = ld.stats()
    assert st["data_tokens/a"] == 7 * steps * SEQ and st["data_tokens/c"] == steps * SEQ
    assert st["data_epochs/c"] == round(steps / WINDOWS["c"], 6)
    assert ld.summary()["b"]["samples"] == 2 * steps


def test_repeat_warns_once_naming_the_source(folders, capsys):
    ld = MixtureLoader(open_data(_section(folders)), SEQ, seed=0)
    for _ in range(7):  # c: 7 windows, one per step -> no repeat yet
        ld.next_step(10, 10)
    assert capsys.readouterr().err == ""
    for _ in range(60):  # c repeats at step 8, a (60 windows) at 9, b (25) at 13; and again
        ld.next_step(10, 10)
    again = MixtureLoader(open_data(_section(folders)), SEQ, seed=0)  # same process: quiet
    for _ in range(30):
        again.next_step(10, 10)
    msgs = capsys.readouterr().err.splitlines()
    assert [m.split("'")[1] for m in msgs] == ["c", "a", "b"]  # once each, named
    assert all(m.startswith("cgpt: warning: data source ") for m in msgs)
    assert "epoch 2" in msgs[0]


# ---------------------------------------------------------------------------- resume
def _run(ld, steps, G=10, micro=5):
    return [_rows(ld.next_step(G, micro)) for _ in range(steps)]


def test_resume_is_exact_mid_epoch_and_elastic(folders):
    mix = open_data(_section(folders))
    straight = _run(MixtureLoader(mix, SEQ, seed=3), 12)
    first = MixtureLoader(mix, SEQ, seed=3)
    _run(first, 5)  # source c (7 windows) is mid-epoch: 5 of 7 read
    state = first.state_dict()
    assert state["samples_seen"] == 50 and first.loaders[2].position == 5
    again = MixtureLoader(mix, SEQ, seed=3)
    again.load_state_dict(state)
    for a, b in zip(_run(again, 7), straight[5:]):
        assert (a == b).all()
    # elastic: 2 ranks resumed from the 1-rank state read the same global batches
    ranks = [MixtureLoader(mix, SEQ, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for r in ranks:
        r.load_state_dict(state)
    two = [_run(r, 7, micro=5) for r in ranks]
    for step in range(7):
        assert (np.concatenate([two[0][step], two[1][step]]) == straight[5 + step]).all()
    assert ranks[1].state_dict() == again.state_dict()


def test_resume_refuses_another_mixture(folders):
    ld = MixtureLoader(open_data(_section(folders)), SEQ, seed=3)
    _run(ld, 2)
    other = MixtureLoader(open_data(_section(folders, (0.6, 0.3, 0.1))), SEQ, seed=3)
    with pytest.raises(CgptError, match="mixture was"):
        other.load_state_dict(ld.state_dict())
    single = MixtureLoader(open_data({"path": str(folders["a"])}), SEQ, seed=3)
    with pytest.raises(CgptError, match="mixture of 3 sources"):
        single.load_state_dict(ld.state_dict())
    with pytest.raises(CgptError, match="read one data folder"):
        ld.load_state_dict(single.state_dict())


def test_one_source_is_the_plain_loader(folders):
    a = MixtureLoader(open_data({"path": str(folders["a"])}), SEQ, seed=9)
    b = TokenLoader(folders["a"], SEQ, seed=9)
    for _ in range(5):
        assert (_rows(a.next_step(8, 4)) == _rows(b.next_step(8, 4))).all()
    assert a.state_dict() == b.state_dict()


# ---------------------------------------------------------------------------- checks
def test_bad_batch_splits_refused_before_reading(folders):
    mix = open_data(_section(folders))
    two = MixtureLoader(mix, SEQ, rank=0, world_size=2, seed=0)
    with pytest.raises(CgptError, match="not divisible by the 2 data-parallel ranks"):
        two.next_step(7, 1)
    one = MixtureLoader(mix, SEQ, seed=0)
    with pytest.raises(CgptError, match="not divisible by micro_batch 3"):
        one.next_step(8, 3)
    with pytest.raises(CgptError, match=r"global batch \(0\) and micro-batch \(1\) must be"):
        one.next_step(0, 1)
    assert two.samples_seen == one.samples_seen == 0  # nothing was consumed


def test_mismatched_tokenizers_refused(folders, tmp_path):
    other = _write(tmp_path / "other", 3000, 10, fp="tok-2")
    d = _section(folders)
    d["sources"][1]["path"] = str(other)
    with pytest.raises(CgptError) as e:
        open_data(d)
    msg = str(e.value)
    assert "\n" not in msg and "'a'" in msg and "'b'" in msg and "tok-1" in msg and "tok-2" in msg
    with pytest.raises(CgptError, match="val x"):
        open_data(_section(folders, val={"x": str(other)}))


def _cfg(tmp_path, data: dict) -> dict:
    return {
        "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": VOCAB},
        "data": data,
        "plan": {
            "params": 1000,
            "seq_len": SEQ,
            "tokens": SEQ * 8 * 4,
            "steps": 4,
            "global_batch_seqs": 8,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 1,
            "decay_steps": 3,
        },
        "runtime": {"out_dir": str(tmp_path / "run")},
    }


@pytest.mark.parametrize("weight", [0, -0.3])
def test_zero_or_negative_weight_refused(tmp_path, folders, weight):
    d = _section(folders, (0.7, weight, 0.1))
    with pytest.raises(ConfigError) as e:
        parse_run_config(_cfg(tmp_path, d))
    assert "data.sources.1" in str(e.value) and "positive" in str(e.value)


def test_names_outside_letters_digits_and_dot_dash_underscore_refused(tmp_path, folders):
    ok = _section(folders)
    ok["sources"][0]["name"] = "web_v1.2-en"
    ok["val"] = {"held.out-1_x": str(folders["a"])}
    assert parse_run_config(_cfg(tmp_path, ok)).data.sources[0].name == "web_v1.2-en"
    for bad in ("a b", "a/b", "val_loss:a", ""):
        src = _section(folders)
        src["sources"][0]["name"] = bad
        with pytest.raises(ConfigError, match="data.sources.0.name"):
            parse_run_config(_cfg(tmp_path, src))
        val = _section(folders, val={bad: str(folders["a"])})
        with pytest.raises(ConfigError, match="data.val names may use letters, digits, _ . -"):
            parse_run_config(_cfg(tmp_path, val))


def test_config_round_trip_and_exclusive_keys(tmp_path, folders):
    cfg = parse_run_config(_cfg(tmp_path, _section(folders)))
    d = cfg.to_dict()["data"]
    assert (
        "path" not in d
        and "val" not in d
        and [s["weight"] for s in d["sources"]]
        == [
            0.7,
            0.2,
            0.1,
        ]
    )
    assert parse_run_config(cfg.to_dict()) == cfg
    plain = parse_run_config(_cfg(tmp_path, {"path": str(folders["a"])})).to_dict()["data"]
    assert set(plain) == {"path", "tokenizer"}  # older configs unchanged
    both = _section(folders) | {"path": str(folders["a"])}
    with pytest.raises(ConfigError, match="exactly one"):
        parse_run_config(_cfg(tmp_path, both))
    dup = _section(folders)
    dup["sources"][2]["name"] = "a"
    with pytest.raises(ConfigError, match="unique"):
        parse_run_config(_cfg(tmp_path, dup))


# ---------------------------------------------------------------------------- validation
def test_val_sets_default_named_and_weighted(folders, tmp_path):
    mix = open_data(_section(folders))
    vs = ValSets(mix, SEQ, 0, 1, num_batches=2, batch_size=2)
    assert list(vs.batches) == ["a", "b", "c"]
    for name, batches in vs.batches.items():
        assert (_rows(batches)[:, 0] // 1000 == list(BASE).index(name)).all()
    row = vs.row({"a": 1.0, "b": 2.0, "c": 4.0})
    assert row["val_loss"] == pytest.approx(0.7 * 1 + 0.2 * 2 + 0.1 * 4)
    assert row["val_loss/b"] == 2.0
    # a val set named like no source: the plain mean over the sets
    extra = _write(tmp_path / "extra", 3000, 5)
    vs = ValSets(open_data(_section(folders, val={"x": str(extra)})), SEQ, 0, 1, 1, 2)
    assert list(vs.batches) == ["x"] and vs.row({"x": 3.0})["val_loss"] == 3.0
    # data.path: one plain val_loss, as before
    vs = ValSets(open_data({"path": str(folders["a"])}), SEQ, 0, 1, 1, 2)
    assert vs.row({"val": 1.5}) == {"val_loss": 1.5}


def test_bits_per_byte_from_text_bytes(tmp_path, folders):
    import json

    from cgpt.train.data.shards import meta_checksum

    meta_path = folders["b"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"]["val"]["text_bytes"] = 100
    meta.pop("meta_sha256", None)
    meta["meta_sha256"] = meta_checksum(meta)
    meta_path.write_text(json.dumps(meta))
    vs = ValSets(open_data(_section(folders)), SEQ, 0, 1, 1, 2)
    tokens = 4 * SEQ + 1
    row = vs.row({"a": 1.0, "b": 2.0, "c": 3.0})
    assert row["val_bpb/b"] == pytest.approx(2.0 * tokens / 100 / math.log(2))
    assert "val_bpb/a" not in row  # no text_bytes recorded for synthetic data


# ---------------------------------------------------------------------------- in the trainer
@pytest.fixture(scope="module")
def byte_sources(tmp_path_factory):
    """Three real-text sources (stdlib bytes, no tokenizer fingerprint: all agree)."""
    from helpers import make_byte_data

    root = tmp_path_factory.mktemp("mix")
    return {
        "big": make_byte_data(root / "big", n_files=12),
        "mid": make_byte_data(root / "mid", n_files=4),
        "small": make_byte_data(root / "small", n_files=1),
    }


def _mix_cfg(tmp_path, srcs, steps=12, **rt):
    from helpers import make_cfg

    d = make_cfg(tmp_path, srcs["big"], steps=steps, eval_every=4, save_every=4, **rt)
    d["data"] = {
        "sources": [
            {"name": "big", "path": str(srcs["big"]), "weight": 0.7},
            {"name": "mid", "path": str(srcs["mid"]), "weight": 0.2},
            {"name": "small", "path": str(srcs["small"]), "weight": 0.1},
        ]
    }
    return d


def _train(d, resume=False, **rt):
    from cgpt.train.loop.trainer import train

    d = {**d, "runtime": {**d["runtime"], **rt}}
    return train(parse_run_config(d), resume=resume)


@pytest.mark.slow  # two short runs and a resume: ~35 s on 2 cores
def test_trainer_mixture_resume_exact_and_val_sets_match_direct(tmp_path, byte_sources):
    import torch
    from helpers import losses

    from cgpt.model.io import load_model
    from cgpt.train.metrics import read_metrics

    d = _mix_cfg(tmp_path, byte_sources)
    straight = _train(d, out_dir=str(tmp_path / "straight"))
    first = _train(d, max_steps=8)  # stops mid-epoch of every source
    assert first["status"] == "stopped"
    assert all(0 < s["epochs"] % 1 for s in first["data"].values())
    resumed = _train(d, resume=True)
    assert resumed["status"] == "completed" and resumed["steps"] == 12
    assert losses(tmp_path / "straight") == losses(tmp_path / "run")  # bitwise
    assert losses(tmp_path / "straight", "val_loss") == losses(tmp_path / "run", "val_loss")
    assert straight["data"] == resumed["data"]
    # per-source tokens: 12 steps × 8 sequences × 32 tokens, split 7/2/1 (8 = 0.8 periods)
    summ = resumed["data"]
    assert sum(s["tokens"] for s in summ.values()) == 12 * 8 * 32
    assert abs(summ["small"]["samples"] - 0.1 * 96) <= 1 + 0.1 * 3
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    last = rows[-1]
    assert last["step"] == 12 and last["data_tokens/mid"] == summ["mid"]["tokens"]
    assert last["data_epochs/small"] == summ["small"]["epochs"]
    # every val set against a direct computation with the final weights
    model = load_model(tmp_path / "run" / "model.safetensors").eval()
    from cgpt.train.data.mixture import ValSets

    vs = ValSets(open_data(d["data"]), 32, 0, 1, 2, 2)
    direct = {}
    with torch.no_grad():
        for name, batches in vs.batches.items():
            s = sum(float(model(x, y)) * x.size(0) for x, y in batches)
            direct[name] = s / sum(x.size(0) for x, _ in batches)
    for name, want in direct.items():
        assert last[f"val_loss/{name}"] == pytest.approx(want, rel=1e-5)
    headline = 0.7 * direct["big"] + 0.2 * direct["mid"] + 0.1 * direct["small"]
    assert last["val_loss"] == pytest.approx(headline, rel=1e-5)
    assert resumed["val_loss"] == pytest.approx(headline, rel=1e-5)


# ---------------------------------------------------------------------------- plan --write
def test_plan_write_mixture(tmp_path, capsys):
    import yaml

    from cgpt.launch.cli import main

    out = tmp_path / "run.yaml"
    from helpers import byte_token_folder

    for name in ("d1", "d2"):  # plan reads the folders (GPT-2's vocab, as 111M's)
        byte_token_folder(tmp_path / name, 120 * 2048, 4096, vocab_size=50257)
    mix = f"a={tmp_path}/d1:0.7,b={tmp_path}/d2:0.3"
    argv = ["plan", "111M", "--write", str(out), "--data", mix]
    assert main(argv) == 0
    data = yaml.safe_load(out.read_text())["data"]
    assert [(s["name"], s["weight"]) for s in data["sources"]] == [("a", 0.7), ("b", 0.3)]
    assert data["sources"][0]["path"] == f"{tmp_path}/d1" and "path" not in data
    parse_run_config(yaml.safe_load(out.read_text()))  # a valid run config
    for bad, msg in (("a=x:0,b=y:1", "must be > 0"), ("a=x", "NAME=DIR:WEIGHT")):
        assert main(["plan", "111M", "--write", str(tmp_path / "bad.yaml"), "--data", bad]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    assert not (tmp_path / "bad.yaml").exists()


# ---------------------------------------------------------------------------- 2 ranks
@pytest.mark.slow  # the real deepspeed launcher, 2 processes + 1: ~30 s on 2 cores
def test_two_ranks_equal_one_rank_with_a_mixture(tmp_path, byte_sources):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from helpers import child_env, losses, write_run_config

    from cgpt.train.metrics import read_metrics
    from cgpt.train.ports import free_port

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    d = _mix_cfg(tmp_path, byte_sources, steps=6, zero_stage=1, micro_batch=2)
    d["runtime"].update(eval_every=3, save_every=0, out_dir=str(tmp_path / "two"))
    two = write_run_config(tmp_path, d, "two.yaml")
    d["runtime"].update(micro_batch=4, out_dir=str(tmp_path / "one"))
    one = write_run_config(tmp_path, d, "one.yaml")
    port = str(free_port())
    cmd = [launcher, "--num_gpus", "2", "--master_port", port, "--module", "cgpt.train", str(two)]
    env = child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(
        [sys.executable, "-m", "cgpt.train", str(one)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
    ra, rb = (
        [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if "val_loss" in r]
        for run in ("two", "one")
    )
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [3, 6]
    for x, y in zip(ra, rb):
        for key in x:
            if key.startswith("val_"):
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-5), key
            elif key.startswith("data_"):
                assert x[key] == y[key], key
    assert os.path.exists(tmp_path / "two" / "summary.json")
