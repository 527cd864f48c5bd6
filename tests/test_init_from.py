"""Continued pretraining: a run initialised from a "published-like" HF folder (a
GPT2LMHeadModel saved by transformers + a byte-level BPE trained here), from a cgpt
checkpoint step, the step-0 proof, refusals, resume, and `cgpt plan --init-from`."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import child_env, gpt2_config, make_bpe, make_byte_data, make_cfg, write_run_config

from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.config import load_run_config, parse_run_config
from cgpt.train.metrics import read_metrics
from cgpt.train.source.fill import fill_model_section

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: E402

VOCAB, CTX = 300, 32
TEXT = "hello world, continued pretraining ✓ 42\n\tof a small model"


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """What `hf download` gives for a GPT-2-architecture model: config.json,
    model.safetensors (random weights), vocab.json + merges.txt (no tokenizer_config.json)."""
    folder = tmp_path_factory.mktemp("pub") / "tiny-gpt"
    make_bpe(folder, "vocab", vocab_size=VOCAB)
    torch.manual_seed(0)
    cfg = gpt2_config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=CTX,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,  # far from uniform: the step-0 loss is not just log(V)
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pub_data(published, tmp_path_factory) -> Path:
    from cgpt.train.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "pub"
    prepare("stdlib:max_docs=40", published, out, val_fraction=0.1, num_proc=1)
    return out


def init_cfg(tmp: Path, data: Path, source, out="run", steps=6, **runtime) -> dict:
    d = make_cfg(tmp, data, out=out, steps=steps, batch=4, eval_every=0, save_every=0, **runtime)
    del d["model"]  # taken from the source
    d["init"] = {"source": str(source)}
    return d


def parse_init(d: dict):
    """What the trainer's entry does: the model section from init.source, then validation."""
    return parse_run_config(fill_model_section(d))


def test_parsing_a_config_reads_no_source(tmp_path, pub_data, monkeypatch):
    from cgpt.train.source import fill

    def no_reads(*a, **k):
        raise AssertionError("parse_run_config resolved init.source")

    monkeypatch.setattr(fill, "resolve", no_reads)
    d = init_cfg(tmp_path, pub_data, tmp_path / "nowhere")
    d["model"] = make_cfg(tmp_path, pub_data)["model"]
    cfg = parse_run_config(d)  # validation only: the source is never looked at
    assert cfg.init.source == str(tmp_path / "nowhere") and cfg.init.sha256 is None
    with pytest.raises(AssertionError, match="resolved init.source"):
        fill_model_section(d)  # the one step that reads it


def test_model_section_comes_from_the_source(tmp_path, published, pub_data):
    cfg = parse_init(init_cfg(tmp_path, pub_data, published))
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_positions) == (2, 32, CTX)
    assert cfg.model.vocab_size == VOCAB and cfg.model.mup is None
    d = init_cfg(tmp_path, pub_data, published)
    d["model"] = {"n_embd": 32, "dropout": 0.1}  # agreeing fields and a free one are fine
    assert parse_init(d).model.dropout == 0.1
    d["model"] = {"n_embd": 64}
    with pytest.raises(ConfigError, match=r"model\.n_embd is 64 .* has n_embd = 32") as e:
        parse_init(d)
    assert "\n" not in str(e.value)
    d["model"] = {"mup": {"base_width": 32}}
    with pytest.raises(ConfigError, match="standard-parametrization model but .* sets mup"):
        parse_init(d)
    d["model"], d["init"]["source"] = {}, str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_init(d)


def test_hub_source_offline_is_one_line(tmp_path, pub_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = init_cfg(tmp_path, pub_data, "hf:cerebras/Cerebras-GPT-111M")
    with pytest.raises(ConfigError, match="cannot get it from the Hugging Face Hub") as e:
        parse_init(d)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_init_from_hf_folder_step0_train_export_resume(tmp_path, published, pub_data):
    from cgpt.model.io import load_model
    from cgpt.train.loop import init_from
    from cgpt.train.loop.trainer import train

    d = init_cfg(tmp_path, pub_data, published, export_hf=True, max_steps=3)
    s = train(parse_init(d))
    run = Path(s["run_dir"])
    rows = read_metrics(run / "metrics.jsonl")
    step0 = rows[0]
    assert step0["step"] == 0 and step0["init_source"] == str(published)
    # the step-0 proof: our loss on the first batch is transformers' (fp32, 1e-5) ...
    assert step0["init_loss_diff"] <= 1e-5
    assert abs(step0["init_loss"] - step0["init_hf_loss"]) <= 1e-5
    # ... and it is the loss the first training step then reports on that same batch
    first = next(r for r in rows if r.get("loss") is not None)
    assert first["step"] == 1 and abs(first["loss"] - step0["init_loss"]) < 1e-6
    assert step0["init_loss"] < math.log(VOCAB) - 0.05 or step0["init_loss"] > math.log(VOCAB)
    # the parent is recorded: path and sha256 of the weights, in config.yaml and summary.json
    saved = yaml.safe_load((run / "config.yaml").read_text())["init"]
    assert saved["sha256"] == _sha256(published / "model.safetensors")
    assert Path(saved["path"]) == published.resolve() and Path(saved["tokenizer"]) == published
    assert json.loads((run / "summary.json").read_text())["init"]["sha256"] == saved["sha256"]
    # the export: logits equal our model's, tokenizer encodes like the source
    hf = GPT2LMHeadModel.from_pretrained(run / "hf").eval()
    ours = load_model(run / "model.safetensors").eval()
    x = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=1e-5)
    exported, source = (
        AutoTokenizer.from_pretrained(run / "hf"),
        AutoTokenizer.from_pretrained(published),
    )
    assert exported(TEXT)["input_ids"] == source(TEXT)["input_ids"]
    assert exported.eos_token_id == source.eos_token_id == hf.config.eos_token_id == 0
    assert exported.model_max_length == CTX
    # --resume continues without reading the source again, and keeps the record
    real = init_from.resolve

    def no_source(*a, **k):
        raise AssertionError("the source was read again on --resume")

    init_from.resolve = no_source
    try:
        s2 = train(load_run_config(run, ["runtime.max_steps=5"]), resume=True)
    finally:
        init_from.resolve = real
    assert s2["steps"] == 5 and s2["init"]["sha256"] == saved["sha256"]
    assert yaml.safe_load((run / "config.yaml").read_text())["init"] == saved
    assert sum(r["step"] == 0 for r in read_metrics(run / "metrics.jsonl")) == 1


def test_step0_mismatch_is_refused_with_both_numbers(tmp_path, published, pub_data, monkeypatch):
    from cgpt.train.loop import init_from
    from cgpt.train.loop.trainer import train

    monkeypatch.setattr(init_from, "_hf_loss", lambda *a: 1.25)
    d = init_cfg(tmp_path, pub_data, published, max_steps=1)
    with pytest.raises(CgptError, match=r"step 0: .* is \d\.\d+ but transformers gives 1\.25"):
        train(parse_init(d))
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory) -> Path:
    """A plain cgpt run (byte data) with checkpoints at steps 4 and 8."""
    from cgpt.train.loop.trainer import train

    tmp = tmp_path_factory.mktemp("byterun")
    data = make_byte_data(tmp / "data", n_files=4)
    d = make_cfg(tmp, data, steps=8, batch=4, eval_every=0, save_every=4, keep_last=3)
    train(parse_run_config(d))
    return tmp


def test_init_from_checkpoint_step_is_the_weights_at_that_step(byte_run, tmp_path):
    from types import SimpleNamespace

    from cgpt.model import GPT
    from cgpt.train.checkpoints.consolidate import consolidate_checkpoint
    from cgpt.train.loop import init_from

    step = byte_run / "run" / "checkpoints" / "step-4"
    d = init_cfg(tmp_path, byte_run / "data", step)
    cfg = parse_init(d)
    assert cfg.model == parse_run_config(yaml.safe_load((step / "config.yaml").read_text())).model
    model = GPT(cfg.model)
    run = SimpleNamespace(cfg=cfg, resume_from=None, data=None, tokenizer_dir=None)
    init_from.load_init(run, model)
    want = consolidate_checkpoint(step).state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert cfg.init.sha256 and cfg.init.path == str(step.resolve())
    assert "step-4" in cfg.init.what
    # and a run started from it trains (ZeRO 0), its step-0 loss logged
    from cgpt.train.loop.trainer import train

    s = train(parse_init(init_cfg(tmp_path, byte_run / "data", step, max_steps=2)))
    rows = read_metrics(Path(s["run_dir"]) / "metrics.jsonl")
    assert rows[0]["step"] == 0 and math.isfinite(rows[0]["init_loss"])
    assert "init_hf_loss" not in rows[0]  # a cgpt source: nothing to compare with


def test_plan_init_from(published, pub_data, tmp_path, capsys):
    from cgpt.launch.cli import main as cli_main
    from cgpt.train.plan import PlanRequest, plan

    p = plan(PlanRequest(init_from=str(published), tokens=2e6))
    assert p.model.n_embd == 32 and p.seq_len == CTX  # capped at the source's context
    assert p.steps == int(2e6 // (p.global_batch_seqs * CTX))
    assert p.warmup_steps == max(1, round(0.01 * p.steps))
    assert p.min_lr == pytest.approx(0.1 * p.lr)
    assert plan(PlanRequest(init_from=str(published), tokens=2e6, lr=1e-4)).lr == 1e-4
    with pytest.raises(CgptError, match="drop params"):  # the library names its fields
        plan(PlanRequest(init_from=str(published), tokens=2e6, params=1e6))
    bad = ["plan", "--init-from", str(published), "--tokens", "2M", "--params", "1M"]
    assert cli_main(bad) == 2  # the CLI its flags
    assert "drop --params" in capsys.readouterr().err
    out = tmp_path / "cpt.yaml"
    argv = ["plan", "--init-from", str(published), "--tokens-per-param", "20"]
    assert cli_main(argv + ["--write", str(out), "--data", str(pub_data)]) == 0
    assert "re-warm over" in capsys.readouterr().out
    written = yaml.safe_load(out.read_text())
    assert written["init"]["source"] == str(published)
    assert load_run_config(out).model.n_embd == 32


def test_plan_from_a_cgpt_run_re_warms_to_its_peak(byte_run):
    from cgpt.train.plan import PlanRequest, plan

    p = plan(PlanRequest(init_from=str(byte_run / "run"), tokens=1e5))
    assert p.lr == 3e-3 and p.peak_lr_from == "the source run's plan.lr"


@pytest.mark.slow
def test_two_ranks_zero1_from_hf_folder(tmp_path, published, pub_data):
    """ZeRO 1 over 2 ranks (the real deepspeed launcher): same step-0 proof, the run trains."""
    from cgpt.train.ports import free_port

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    d = init_cfg(tmp_path, pub_data, published, zero_stage=1, micro_batch=1, max_steps=3)
    cfg = write_run_config(tmp_path, d)
    env = child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(free_port())]
    cmd += ["--module", "cgpt.train", str(cfg)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["step"] == 0 and rows[0]["init_loss_diff"] <= 1e-5
    first = next(r for r in rows if r.get("loss") is not None)
    assert abs(first["loss"] - rows[0]["init_loss"]) < 1e-5  # global mean of both ranks
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["init"]
    assert saved["sha256"] == _sha256(published / "model.safetensors")


def test_mup_source_into_a_standard_run_is_refused(tmp_path, pub_data):
    from cgpt.model import GPT, GPTConfig, MuPConfig
    from cgpt.model.io import save_model

    mup = GPT(
        GPTConfig(
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=CTX,
            vocab_size=VOCAB,
            mup=MuPConfig(base_width=16),
        )
    )
    src = save_model(mup, tmp_path / "mup.safetensors")
    d = init_cfg(tmp_path, pub_data, src)
    assert parse_init(d).model.mup.base_width == 16  # μP comes with the source
    d["model"] = {"mup": None}
    with pytest.raises(ConfigError, match="is a μP model but the model section has no mup"):
        parse_init(d)
