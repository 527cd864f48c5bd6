"""cgpt.train.source: one ModelSource whichever way the same weights are named (run folder,
model file, checkpoint step, the run's checkpoints folder, its HF export), on what the trainer
really writes; sha256 as ``sha256sum`` prints it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import make_byte_data, make_cfg, make_tokenizer

from cgpt.model.errors import CgptError
from cgpt.train.config import parse_run_config
from cgpt.train.eval.source import open_source, shape_of
from cgpt.train.source.digest import weights_sha256
from cgpt.train.source.model_source import load_model_of, locate_weights, resolve

pytest.importorskip("transformers", reason="the run's HF export is verified with transformers")
STEPS = 4


def sha256sum(folder: Path, pattern: str) -> str:
    """What the coreutils print for the files: `sha256sum FILE`, or for several files the
    sha256 of their `sha256sum` lines (names sorted in the C locale)."""
    names = sorted(p.name for p in folder.glob(pattern))
    out = subprocess.run(
        ["sha256sum", *names], cwd=folder, capture_output=True, text=True, check=True
    ).stdout
    if len(names) == 1:
        return out.split()[0]
    return subprocess.run(
        ["sha256sum"], input=out, capture_output=True, text=True, check=True
    ).stdout.split()[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run: model.safetensors, checkpoints step-2 and step-4, hf/ (its export),
    and a tokenizer/ folder as `cgpt train` leaves one beside a prepared run."""
    from cgpt.train.loop.trainer import train

    tmp = tmp_path_factory.mktemp("source")
    data = make_byte_data(tmp / "data", n_files=4)
    d = make_cfg(tmp, data, steps=STEPS, batch=4, eval_every=0, save_every=2, export_hf=True)
    s = train(parse_run_config(d))
    run = Path(s["run_dir"])
    make_tokenizer(run / "tokenizer", vocab_size=257)
    return run


def test_run_folder_model_file_and_hf_export_are_one_model(run):
    by_run, by_file = resolve(str(run)), resolve(str(run / "model.safetensors"))
    by_hf = resolve(str(run / "hf"))
    assert (by_run.kind, by_file.kind, by_hf.kind) == ("run", "model-file", "hf-folder")
    assert by_run.path == by_file.path == run / "model.safetensors"
    assert by_run.sha256 == by_file.sha256 == sha256sum(run, "model.safetensors")
    # the HF export: one sha256 rule for init.sha256 and cgpt eval's weights_sha256
    assert by_hf.sha256 == weights_sha256(run / "hf") == sha256sum(run / "hf", "model.safetensors")
    assert by_run.shape == by_file.shape == by_hf.shape
    assert by_run.tokenizer == by_file.tokenizer == run / "tokenizer" and by_hf.tokenizer is None
    assert (by_run.peak_lr, by_run.lr_from) == (3e-3, "the source run's plan.lr")
    assert by_hf.peak_lr is None  # a 2-layer shape has no published recipe
    ours, what = load_model_of(by_run)
    theirs, hf_what = load_model_of(by_hf)
    assert what == f"model file {run / 'model.safetensors'}" and "Hugging Face" in hf_what
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), k
    # cgpt eval reaches the same file, shape and sha256
    ev = open_source(str(run), need_tokenizer=False)
    assert (ev.path, ev.source_sha256, ev.shape) == (
        by_run.path,
        by_run.sha256,
        shape_of(by_run.shape),
    )


def test_checkpoint_step_reached_three_ways(run, tmp_path):
    step = run / "checkpoints" / f"step-{STEPS}"
    by_step, by_ckpts = resolve(str(step)), resolve(str(run / "checkpoints"))
    assert (by_step.kind, by_ckpts.kind) == ("checkpoint", "run")
    assert by_step.path == by_ckpts.path == step
    assert by_step.sha256 == by_ckpts.sha256 == sha256sum(step, "*_states.pt")
    # a preempted run (no final model.safetensors) is its newest checkpoint: the same files
    copy = shutil.copytree(run, tmp_path / "preempted", symlinks=True)
    (copy / "model.safetensors").unlink()
    by_copy = resolve(str(copy))
    assert (
        by_copy.path == copy / "checkpoints" / f"step-{STEPS}" and by_copy.sha256 == by_step.sha256
    )
    assert by_step.shape == by_copy.shape == resolve(str(run)).shape
    assert by_step.tokenizer == run / "tokenizer" and by_step.peak_lr == 3e-3
    # ZeRO-0, fp32: the module weights saved at the last step are the final weights
    got, what = load_model_of(by_step)
    want, _ = load_model_of(resolve(str(run)))
    assert what.startswith(f"checkpoint {step} (ZeRO-0")
    for (k, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k


def test_sharded_export_one_sha256_for_init_and_eval(run, tmp_path):
    """`cgpt export --max-shard-size`: init.sha256 and cgpt eval's weights_sha256 are one
    number, the sha256 of the index's and the shards' `sha256sum` lines."""
    from cgpt.launch.cli import main

    out = tmp_path / "sharded"
    assert main(["export", str(run), str(out), "--max-shard-size", "50KB"]) == 0
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    src = resolve(str(out))
    assert src.weight_files() == [out / "model.safetensors.index.json", *shards]
    assert src.sha256 == weights_sha256(out) == sha256sum(out, "model*.*")
    assert src.shape == resolve(str(run)).shape


def test_export_refuses_an_hf_folder_the_resolver_reads(run):
    """One resolver, two uses: init-from reads an HF folder; export (locate_weights) points to
    import-hf, with the message it always had."""
    assert resolve(str(run / "hf")).kind == "hf-folder"
    with pytest.raises(CgptError, match=r"looks like a Hugging Face folder already .*import-hf"):
        locate_weights(run / "hf")


def test_cached_hub_folder_never_downloads():
    """cgpt eval's weights_sha256 for hf:NAME reads the snapshot lm-eval left in the cache;
    a name that is not cached gives None (no download, no error)."""
    from cgpt.train.source.hub import cached_hub_folder

    assert cached_hub_folder("cerebras/no-such-model-cgpt-test") is None
