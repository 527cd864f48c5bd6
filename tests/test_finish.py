"""Runs that finish: every ZeRO stage x precision through the end of a run, its export and a
resume; write errors outside checkpoint saves; the start-up banner (issue 26 items 5, 12;
issue 24 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_byte_data, make_cfg

from cgpt.launch.cli import main as cli_main
from cgpt.model.errors import CgptError
from cgpt.model.io import load_model
from cgpt.train.config import parse_run_config

pytest.importorskip("transformers", reason="the final export is verified with transformers")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=2)


def _tiny(tmp: Path, data: Path, out: str = "run", **rt) -> dict:
    """2 steps of 2 sequences, one micro-batch each: the cheapest run that saves and exports."""
    d = make_cfg(tmp, data, out=out, steps=2, batch=2, eval_every=0, save_every=1, **rt)
    d["model"].update(n_embd=16, n_positions=16)
    d["plan"].update(seq_len=16, tokens=16 * 2 * 2, warmup_steps=1, decay_steps=1)
    return d


def _train(d: dict, resume: bool = False) -> dict:
    from cgpt.train.loop.trainer import train

    return train(parse_run_config(d), resume=resume)


def _hf_matches_model(run: Path) -> None:
    """hf/ (as transformers loads it) holds the weights of model.safetensors."""
    from cgpt.model.hf import import_hf

    ref, got = load_model(run / "model.safetensors"), import_hf(run / "hf")
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a.float(), b.float()), k


# ---------------------------------------------------------------------------- item 5
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_every_stage_and_precision_finishes_exports_and_resumes(
    tmp_path, data, zero_stage, precision
):
    """Stopped at max_steps (final export), resumed to the end (export again), the newest
    checkpoint exported by `cgpt export`. ZeRO-3 bf16 used to fail at the end ("Cannot free
    a ZeRO-3 parameter"): no hf/, no summary.json, and --resume failed the same way."""
    d = _tiny(tmp_path, data, zero_stage=zero_stage, precision=precision, export_hf=True)
    d["runtime"]["max_steps"] = 1
    first = _train(d)
    run = Path(first["run_dir"])
    assert first["status"] == "stopped" and (run / "summary.json").is_file()
    _hf_matches_model(run)
    d["runtime"]["max_steps"] = None
    done = _train(d, resume=True)
    assert done["status"] == "completed" and done["steps"] == 2
    _hf_matches_model(run)
    dtype = next(load_model(run / "model.safetensors").parameters()).dtype
    assert dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    from cgpt.model.hf import import_hf

    out = tmp_path / "exported"
    assert cli_main(["export", str(run / "checkpoints" / "step-2"), str(out)]) == 0
    ref, got = load_model(run / "model.safetensors"), import_hf(out)
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(b.to(a.dtype), a), k


@pytest.mark.slow
def test_bf16_mup_run_finishes_with_an_fp32_hf_export(tmp_path, data):
    """μP multipliers folded into bf16 weights round: the final export's logits check
    failed (old code, any ZeRO stage). The HF folder of a μP run is written in fp32."""
    from transformers import GPT2LMHeadModel

    d = _tiny(tmp_path, data, zero_stage=3, precision="bf16", export_hf=True)
    d["model"]["mup"] = {"base_width": 8}
    assert _train(d)["status"] == "completed"
    run = tmp_path / "run"
    ours = load_model(run / "model.safetensors").float().eval()
    hf = GPT2LMHeadModel.from_pretrained(run / "hf").eval()
    assert hf.dtype == torch.float32
    x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- issue 24 item 2
@pytest.mark.slow
def test_banner_before_the_first_step_and_step0_check_on_the_console(tmp_path, data, capsys):
    """`cgpt train` says what it trains (size, steps, tokens, batch, where) before step 1, an
    ETA once two steps are timed, and a continued run's step-0 check on the console."""
    from helpers import write_run_config

    from cgpt.model import GPT
    from cgpt.model.config import GPTConfig

    d = _tiny(tmp_path, data, out="a", export_hf=True, log_every=1)
    d["plan"].update(steps=4, tokens=16 * 2 * 4, decay_steps=3)
    assert cli_main(["train", str(write_run_config(tmp_path, d, "a.yaml"))]) == 0
    err = capsys.readouterr().err
    n = GPT(GPTConfig.from_dict(d["model"])).num_params()
    banner = err.index(f"cgpt train: {n:,} parameters (2 layers, width 16, 2 heads")
    assert banner < err.index("step 1/4 loss")
    assert "4 steps, 128 tokens; batch 2 x 16 tokens (micro-batch 2 x 1 accumulation" in err
    assert f"fp32, ZeRO-0, cpu; writing to {tmp_path / 'a'}" in err
    assert err.index("step 2/4 loss") < err.index("\nETA 00:00:") < err.index("step 3/4 loss")
    assert " for 2 more steps (" in err
    # a continued run from the export: the step-0 check, rank 0 vs transformers, on stderr
    c = _tiny(tmp_path, data, out="b", max_steps=1)
    del c["model"]
    c["init"] = {"source": str(tmp_path / "a" / "hf")}
    assert cli_main(["train", str(write_run_config(tmp_path, c, "b.yaml"))]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("step 0: init_loss "))
    assert f"of the weights from {tmp_path / 'a' / 'hf'}" in line
    assert "vs transformers" in line and "loaded faithfully" in line
    assert "  1 step of 2 (runtime.max_steps), 32 tokens;" in err


# ---------------------------------------------------------------------------- item 14
def test_same_host_in_two_spellings_is_refused(tmp_path):
    from cgpt.launch.hostfile import parse_hostfile

    for a, b in [
        ("node1", "NODE1"),
        ("node1", "node1."),
        ("node1.cluster", "Node1.Cluster."),
        ("node1", "alice@node1"),
        ("fe80::1", "fe80:0:0::1"),
    ]:
        with pytest.raises(CgptError, match=f"line 2: host '{b}' is listed twice \\(as '{a}'"):
            parse_hostfile(f"{a} slots=2\n{b} slots=2\n")
    assert len(parse_hostfile("node1 slots=2\nnode10 slots=2\n")) == 2


@pytest.mark.parametrize("inputs", [["..=stdlib"], [".=stdlib"], ["a=stdlib", "..=stdlib"]])
def test_dot_names_never_reach_the_output_parent(tmp_path, capsys, inputs):
    """`cgpt prepare --input ..=SRC` wrote OUT/.. (the parent): its lock was left there."""
    from helpers import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    parent = tmp_path / "parent"
    parent.mkdir()
    argv = ["prepare", "--tokenizer", str(tok), "--out", str(parent / "out")]
    for item in inputs:
        argv += ["--input", item]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgpt prepare: error: --input ") and "\n" not in err
    assert "not starting with '.'" in err
    assert list(parent.iterdir()) == []


# ---------------------------------------------------------------------------- item 13
@pytest.mark.slow
@pytest.mark.parametrize("config_too", [False, True])
def test_checkpoint_of_another_shape_is_one_line(tmp_path, data, capsys, config_too):
    """Another run's checkpoint (width 16) copied into a width-32 run, with its own
    config.yaml or with the run's: one line and exit 2, nothing changed on disk (was
    DeepSpeed's load_state_dict 'size mismatch' traceback)."""
    import shutil

    from helpers import tree_digest

    _train(_tiny(tmp_path, data, out="a"))
    b = _tiny(tmp_path, data, out="b", max_steps=1)
    b["model"]["n_embd"] = 32
    _train(b)
    step = tmp_path / "b" / "checkpoints" / "step-1"
    own = (step / "config.yaml").read_bytes()
    shutil.rmtree(step)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-1", step)
    if config_too:
        (step / "config.yaml").write_bytes(own)
    before = tree_digest(tmp_path / "b")
    capsys.readouterr()
    assert cli_main(["train", str(tmp_path / "b"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cgpt train: error: ") and str(step) in err[-1]
    assert not any("Traceback" in ln or "size mismatch" in ln for ln in err)
    assert tree_digest(tmp_path / "b") == before


# ---------------------------------------------------------------------------- item 12
# A full disk, simulated where cgpt writes: the exceptions are the ones a full 64 KiB tmpfs
# gave (Python's write: OSError(28) without a file name; safetensors: its SafetensorError
# with the OS's words), raised deterministically at the write the test names. A real tmpfs
# needs mount rights that CI does not have.
ENOSPC_WORDS = "No space left on device"


def _enospc() -> OSError:
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _follow(command: str) -> int:
    """Run a printed `cgpt ...` command literally (in this process: the same argv)."""
    import shlex

    argv = shlex.split(command)
    assert argv[0] == "cgpt"
    return cli_main(argv[1:])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in ln for ln in err), err
    return err[-1]


@pytest.mark.slow
def test_disk_full_during_the_final_export_then_the_printed_command_finishes(
    tmp_path, data, capsys, monkeypatch
):
    import safetensors.torch
    from helpers import write_run_config
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def full_in_hf(tensors, filename, metadata=None):  # model.safetensors fits, hf/ not
        if ".hf." in str(filename):
            msg = f"Error while serializing: I/O error: {ENOSPC_WORDS} (os error 28)"
            raise SafetensorError(msg)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_in_hf)
    cfg = write_run_config(tmp_path, _tiny(tmp_path, data, export_hf=True))
    assert cli_main(["train", str(cfg)]) == 2
    line = _error_line(capsys)
    run = tmp_path / "run"
    assert line.startswith(f"cgpt train: error: cannot write {run / 'hf'}: {ENOSPC_WORDS}; ")
    assert f"checkpoint {run / 'checkpoints' / 'step-2'} (step 2) is intact, with every" in line
    assert not (run / "hf").exists() and not (run / "summary.json").exists()
    assert not list(run.glob(".hf*"))  # no half-written export left behind
    monkeypatch.setattr(safetensors.torch, "save_file", real)  # space freed
    assert _follow(line.split("continue with: ", 1)[1]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    _hf_matches_model(run)


@pytest.mark.slow
def test_disk_full_while_appending_metrics(tmp_path, data, capsys, monkeypatch):
    from helpers import write_run_config

    from cgpt.train import metrics
    from cgpt.train.metrics import read_metrics

    class FillsUp:
        """metrics.jsonl on a disk that fills after `room` bytes: a write that does not fit
        is cut there (the kernel writes what fits) and raises ENOSPC."""

        def __init__(self, f, room: int):
            self.f, self.room = f, room

        def write(self, text: str) -> int:
            if len(text) > self.room:
                self.f.write(text[: self.room])
                self.f.flush()
                self.room = 0
                raise _enospc()
            self.room -= len(text)
            return self.f.write(text)

        def flush(self) -> None:
            self.f.flush()

        def close(self) -> None:
            self.f.close()

    d = _tiny(tmp_path, data, log_every=1)
    d["plan"].update(steps=4, tokens=16 * 2 * 4, decay_steps=3)
    cfg = write_run_config(tmp_path, d)
    real_open = metrics.open_append  # how the logger opens metrics.jsonl
    monkeypatch.setattr(metrics, "open_append", lambda p, what="": FillsUp(real_open(p, what), 600))
    assert cli_main(["train", str(cfg)]) == 2
    line = _error_line(capsys)
    run = tmp_path / "run"
    assert line.startswith(f"cgpt train: error: cannot write {run / 'metrics.jsonl'}: ")
    assert ENOSPC_WORDS in line and "metrics.jsonl keeps its rows up to it" in line
    step = int(line.split("(step ", 1)[1].split(")")[0])
    assert f"checkpoint {run / 'checkpoints' / f'step-{step}'} (step {step}) is intact" in line
    monkeypatch.undo()
    assert _follow(line.split("continue with: ", 1)[1]) == 0
    rows = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert rows == [1, 2, 3, 4]  # the cut row skipped, the steps after the checkpoint redone


def test_export_into_a_folder_that_refuses_writes(tmp_path, data, capsys, monkeypatch):
    """A read-only folder: mode 0555 for a user; root ignores modes, so there /sys, where
    the kernel refuses new entries (EPERM) to everyone."""
    import os

    model = tmp_path / "m.safetensors"
    from cgpt.model import GPT
    from cgpt.model.config import GPTConfig
    from cgpt.model.io import save_model

    save_model(GPT(GPTConfig.from_dict(_tiny(tmp_path, data)["model"])), model)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root
        ro = Path("/sys")
    out = ro / "cgpt-export-test"
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", str(model), str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"cgpt export: error: cannot write {out}: ")
    assert ("Permission denied" in line) or ("Operation not permitted" in line)
    assert f"{model} is unchanged and nothing was published at {out}" in line
    assert not out.exists()
    assert _follow(line.split("e.g.: ", 1)[1]) == 0
    assert (tmp_path / "cgpt-export-test" / "config.json").is_file()
