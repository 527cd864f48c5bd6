"""`cgpt export` of checkpoints the trainer really wrote: ZeRO 0, 1 (fp32 and bf16, the
default precision) and 3 in one process, ZeRO-1 bf16 and ZeRO-2 over 2 ranks under the
`deepspeed` launcher (slow). Each run stops at runtime.max_steps after saving, so its
final model.safetensors holds the same weights as its newest checkpoint: the reference the
consolidated export must match."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env, make_byte_data, make_cfg, make_tokenizer, write_run_config

from cgpt.launch.cli import main
from cgpt.model.errors import CgptError
from cgpt.model.io import load_model
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.checkpoints.consolidate import consolidate_checkpoint
from cgpt.train.config import parse_run_config
from cgpt.train.source.model_source import locate_weights

pytest.importorskip("transformers", reason="export verification needs transformers")

CGPT = str(Path(sys.executable).with_name("cgpt"))
LAST, EARLIER = 3, 2  # max_steps, and the save_every checkpoint before it


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=4)


def _cfg(tmp: Path, data: Path, name: str, **rt) -> dict:
    return make_cfg(
        tmp,
        data,
        out=name,
        steps=6,
        batch=4,
        eval_every=0,
        save_every=EARLIER,
        max_steps=LAST,
        **rt,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """Trained runs, one per (zero_stage, precision), made on first use."""
    from cgpt.train.loop.trainer import train

    root, made = tmp_path_factory.mktemp("runs"), {}

    def get(zero_stage: int, precision: str = "fp32") -> Path:
        key = (zero_stage, precision)
        if key not in made:
            d = _cfg(
                root, data, f"z{zero_stage}-{precision}", zero_stage=zero_stage, precision=precision
            )
            s = train(parse_run_config(d))
            assert s["status"] == "stopped" and s["steps"] == LAST
            made[key] = Path(s["run_dir"])
        return made[key]

    return get


def _hf_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    with torch.no_grad():
        return GPT2LMHeadModel.from_pretrained(folder).eval()(x).logits


def _check_export(run: Path, out: Path, precision: str) -> None:
    """OUT (exported from the newest checkpoint) holds the weights the run ended with."""
    from cgpt.model.hf import import_hf

    ref = load_model(run / "model.safetensors").eval()  # the trainer's engine at step LAST
    got = import_hf(out)
    if precision == "fp32":  # fp32 master weights == the module's: bitwise, and the logits
        for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            assert torch.equal(a, b), k
        x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = ref(x)
        torch.testing.assert_close(_hf_logits(out, x), want, atol=1e-5, rtol=1e-5)
    else:  # bf16: the export is the fp32 master copy, which rounds to the bf16 module exactly
        assert next(got.parameters()).dtype == torch.float32
        for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            assert a.dtype == torch.bfloat16 and torch.equal(b.to(torch.bfloat16), a), k


# ---------------------------------------------------------------------------- one process
@pytest.mark.parametrize(
    "zero_stage, precision", [(0, "fp32"), (1, "fp32"), (3, "fp32"), (1, "bf16")]
)
def test_export_checkpoint_the_trainer_wrote(runs, tmp_path, capsys, zero_stage, precision):
    run = runs(zero_stage, precision)
    step = run / "checkpoints" / f"step-{LAST}"
    assert not (step / "model.safetensors").exists()  # DeepSpeed's files, not ours
    assert main(["export", str(step), str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {step} (ZeRO-{zero_stage}" in out and "verified against transformers" in out
    _check_export(run, tmp_path / "hf", precision)
    # the earlier checkpoint is a different model: the step folder named is the one read
    early = consolidate_checkpoint(run / "checkpoints" / f"step-{EARLIER}")
    assert not torch.equal(
        early.transformer.wte.weight,
        load_model(run / "model.safetensors").transformer.wte.weight.float(),
    )
    assert early.lm_head.weight is early.transformer.wte.weight  # tied, as trained


def test_bf16_checkpoint_exports_as_trained_with_dtype(runs, tmp_path):
    """--dtype bfloat16 of a bf16 run's checkpoint is bitwise the bf16 model it trained."""
    from cgpt.model.hf import import_hf

    run = runs(1, "bf16")
    assert (
        main(
            [
                "export",
                str(run / "checkpoints" / f"step-{LAST}"),
                str(tmp_path / "hf"),
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    ref, got = load_model(run / "model.safetensors"), import_hf(tmp_path / "hf")
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert b.dtype == torch.bfloat16 and torch.equal(a, b), k


def test_run_folder_source_final_model_else_newest_complete_checkpoint(runs, tmp_path, capsys):
    run = shutil.copytree(runs(1), tmp_path / "run")
    ckpts = run / "checkpoints"
    # the final weights of a finished (here: stopped) run
    assert locate_weights(run) == run / "model.safetensors"
    # an interrupted save (no `complete` marker) is never exported, not even as the newest
    shutil.copytree(
        ckpts / f"step-{LAST}", ckpts / "tmp-step-5", ignore=shutil.ignore_patterns("complete")
    )
    (ckpts / "step-4").mkdir()
    # a preempted (or diverged) run has no model.safetensors: its newest complete checkpoint
    final = (run / "model.safetensors").rename(tmp_path / "final.safetensors")
    assert locate_weights(run) == ckpts / f"step-{LAST}"
    make_tokenizer(run / "tokenizer", vocab_size=257)  # found from the run of the step folder
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert f"checkpoint {ckpts / f'step-{LAST}'}" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    shutil.move(final, run / "model.safetensors")
    _check_export(run, tmp_path / "hf", "fp32")
    # final weights older than a published checkpoint (stopped at max_steps, resumed, then
    # preempted): the checkpoint is the newer state
    os.utime(run / "model.safetensors", (1, 1))
    assert locate_weights(run) == ckpts / f"step-{LAST}"
    with pytest.raises(CgptError, match="not a complete checkpoint"):
        locate_weights(ckpts / "tmp-step-5")
    with pytest.raises(CgptError, match="not a complete checkpoint"):
        locate_weights(ckpts / "step-4")


# ---------------------------------------------------------------------------- bad checkpoints
def _poison_zero1(step: Path) -> None:
    """NaN/Inf into the fp32 master weights of a ZeRO-1 checkpoint (a diverged run)."""
    f = next(step.glob("*_optim_states.pt"))
    sd = torch.load(f, weights_only=False)  # the test's own file: full unpickling is fine
    flat = sd["optimizer_state_dict"]["single_partition_of_fp32_groups"]
    flat[0].data[0], flat[1].data[-40] = float("nan"), float("inf")  # two different tensors
    torch.save(sd, f)


def _poison_zero0(step: Path) -> None:
    f = step / "mp_rank_00_model_states.pt"
    sd = torch.load(f, weights_only=False)
    sd["module"]["transformer.ln_f.bias"].data[3] = float("nan")
    torch.save(sd, f)


def _foreign_object(step: Path) -> None:
    """A type outside the allowlist, in the optimizer file zero_to_fp32 reads."""
    import fractions

    f = next(step.glob("*_optim_states.pt"))
    sd = torch.load(f, weights_only=False)
    sd["note"] = fractions.Fraction(1, 3)
    torch.save(sd, f)


def _drop_optim(step: Path) -> None:
    next(step.glob("*_optim_states.pt")).unlink()


def _drop_config(step: Path) -> None:
    (step / "config.yaml").unlink()
    (step.parent.parent / "config.yaml").unlink()


def _drop_marker(step: Path) -> None:
    (step / "complete").unlink()


@pytest.mark.parametrize(
    "stage, damage, message",
    [
        (1, _poison_zero1, "2 of 28 tensors hold non-finite values"),
        (0, _poison_zero0, "1 of 28 tensors hold non-finite values"),
        (1, _foreign_object, "outside the checkpoint allowlist (fractions.Fraction)"),
        # a lost file is found by the checkpoint's manifest (every file it saved)
        (1, _drop_optim, "is incomplete (zero_pp_rank_0_mp_rank_00_optim_states.pt is missing)"),
        (1, _drop_config, "is incomplete (config.yaml is missing)"),
        (1, _drop_marker, "not a complete checkpoint"),
    ],
)
def test_bad_checkpoint_is_one_line_and_writes_nothing(
    runs, tmp_path, capsys, stage, damage, message
):
    run = shutil.copytree(runs(stage), tmp_path / "run")
    capsys.readouterr()  # the fixture's training output, when this test made the run
    step = run / "checkpoints" / f"step-{LAST}"
    damage(step)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", str(step), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cgpt export: error:") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_wrapper_prefixes_on_keys_are_stripped(runs, tmp_path):
    """Keys saved through a wrapper (DDP/DeepSpeed "module.", torch.compile "_orig_mod.")."""
    run = shutil.copytree(runs(0), tmp_path / "run")
    f = run / "checkpoints" / f"step-{LAST}" / "mp_rank_00_model_states.pt"
    sd = torch.load(f, weights_only=False)
    sd["module"] = {f"module._orig_mod.{k}": v for k, v in sd["module"].items()}
    torch.save(sd, f)
    # whoever rewrites a checkpoint's file rewrites its manifest too (it finds lost files)
    (f.parent / ckpt.MANIFEST).write_text(json.dumps({"files": ckpt.manifest(f.parent)}))
    got, ref = consolidate_checkpoint(f.parent), load_model(run / "model.safetensors")
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k


def test_trusted_run_folder_loads_foreign_objects(runs, tmp_path, monkeypatch):
    run = shutil.copytree(runs(1), tmp_path / "run")
    step = run / "checkpoints" / f"step-{LAST}"
    _foreign_object(step)
    monkeypatch.setenv("CGPT_TRUST_CHECKPOINTS", "1")
    assert main(["export", str(step), str(tmp_path / "hf"), "--no-verify"]) == 0
    _check_export(run, tmp_path / "hf", "fp32")


@pytest.mark.slow
def test_diverged_checkpoint_cli_is_one_line_without_deepspeed_noise(runs, tmp_path):
    """As a user runs it: a fresh process imports DeepSpeed (banner) and runs zero_to_fp32
    (prints, progress bars); stderr is still the one error line, stdout empty."""
    run = shutil.copytree(runs(1), tmp_path / "run")
    _poison_zero1(run / "checkpoints" / f"step-{LAST}")
    (run / "model.safetensors").unlink()  # a diverged run has no final weights
    r = subprocess.run(
        [CGPT, "export", str(run), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env=child_env(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 of 28 tensors hold non-finite values" in lines[0], r.stderr
    assert r.stdout == "" and not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------- two ranks
@pytest.mark.slow
@pytest.mark.parametrize("zero_stage, precision", [(2, "fp32"), (1, "bf16")])
def test_two_rank_checkpoint_consolidates(tmp_path, data, capsys, zero_stage, precision):
    """Each rank saved its own optimizer partition; the export gathers both."""
    from cgpt.train.ports import free_port

    launcher = str(Path(sys.executable).with_name("deepspeed"))
    d = _cfg(tmp_path, data, "two", zero_stage=zero_stage, precision=precision)
    cmd = [
        launcher,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "cgpt.train",
        str(write_run_config(tmp_path, d, "two.yaml")),
    ]
    r = subprocess.run(
        cmd,
        env=child_env(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    step = tmp_path / "two" / "checkpoints" / f"step-{LAST}"
    assert len(list(step.glob("*_optim_states.pt"))) == 2  # really two partitions
    assert main(["export", str(step), str(tmp_path / "hf")]) == 0
    assert f"ZeRO-{zero_stage}, 2 ranks" in capsys.readouterr().out
    _check_export(tmp_path / "two", tmp_path / "hf", precision)
