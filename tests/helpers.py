"""Pieces several test files share: the environment of a fresh child process, a diverging
forward pass, random weights, and small tokenizers and HF configs built here.

Also the tiny byte-level training run (data, run config, metrics, folder digest), the tiny
sweep and the launch config that many test files build, and a zero-filled token array.

Test files import them as ``from helpers import ...``: pytest puts tests/ on sys.path (its
default "prepend" import mode, tests/ has no __init__.py). A test module never imports from
another test module (tests/test_helpers_rule.py checks): what two files share lives here or in
conftest.py. Nothing here needs transformers at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from cgpt.train.ports import PROCESS_GROUP_VARS

# ---- child processes ------------------------------------------------------------------------
# PROCESS_GROUP_VARS: set by the in-process training runs of this session (init_distributed's
# one-process group) or by a launcher around pytest: a fresh child would join that group


def child_env(**extra: str) -> dict[str, str]:
    """A copy of os.environ for a fresh process: without PROCESS_GROUP_VARS, then ``extra``
    (which may set some of them again, e.g. a hand-made rank)."""
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARS}
    return {**env, **extra}


# ---- divergence -----------------------------------------------------------------------------
@contextlib.contextmanager
def nan_loss_after(good_calls: int) -> Iterator[None]:
    """While inside: GPT.forward, training with targets, returns its loss times NaN from the
    ``good_calls + 1``-th such call on (calls = micro-batches, so ``7 * 4`` with 4
    micro-batches per step diverges at step 8). Evaluation calls are left alone."""
    from cgpt.model.gpt import GPT

    real, calls = GPT.forward, []

    def poisoned(self, idx, targets=None):
        out = real(self, idx, targets)
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) > good_calls:
                return out * float("nan")
        return out

    GPT.forward = poisoned
    try:
        yield
    finally:
        GPT.forward = real


# ---- models ---------------------------------------------------------------------------------
def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerNorm gains/biases too), so no key can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.3
                + (1.0 if p.dim() == 1 and p.shape[0] % 2 else 0.0)
            )
    return module


def assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def gpt2_config(**kw):
    """transformers' GPT2Config of our architecture: plain gelu and no dropout, as
    Cerebras-GPT (GPT2Config's default dropout is 0.1); ``kw`` sets the shape and the rest."""
    from transformers import GPT2Config

    base = dict(activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(**{**base, **kw})


# ---- tokenizers -----------------------------------------------------------------------------
EOS = "<|endoftext|>"


def byte_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2's kind) trained on ``texts``; ``<|endoftext|>`` is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def make_tokenizer(path: Path, vocab_size: int = 90) -> Path:
    """An HF tokenizer folder (PreTrainedTokenizerFast.save_pretrained), eos = bos = EOS."""
    from transformers import PreTrainedTokenizerFast

    tok = byte_bpe(["hello world, the export round trip"] * 20, vocab_size)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS).save_pretrained(
        path
    )
    return path


def make_bpe(folder: Path, layout: str, vocab_size: int = 300) -> Path:
    """A byte-level BPE saved as a bare ``tokenizer.json`` (layout "json") or as GPT-2's
    original ``vocab.json`` + ``merges.txt`` ("vocab"); no tokenizer_config.json either way.
    <|endoftext|> is id 0, not vocab_size - 1."""
    text = ["hello world, the export round trip", "continued pretraining of a small model"]
    tok = byte_bpe(text * 20, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "json":
        tok.save(str(folder / "tokenizer.json"))
    else:
        tok.model.save(str(folder))
    return folder


# ---- data folders ---------------------------------------------------------------------------
def byte_token_folder(
    folder: Path, train_tokens: int, val_tokens: int, vocab_size: int = 257
) -> Path:
    """A data folder (cgpt.train.data.shards.write_token_data) whose tokens are the bytes of
    the standard library's .py files, repeated to ``train_tokens`` / ``val_tokens``; EOS is
    ``vocab_size - 1`` (for vocab 50257, GPT-2's <|endoftext|>), one per file."""
    import sysconfig

    import numpy as np

    from cgpt.train.data.shards import write_token_data

    eos = vocab_size - 1
    parts = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]:
        parts += [np.frombuffer(f.read_bytes(), np.uint8).astype(np.int64), np.array([eos])]
    text = np.concatenate(parts)
    toks = np.resize(text, train_tokens + val_tokens)
    write_token_data(folder, toks[:train_tokens], toks[train_tokens:], vocab_size, eos)
    return folder


# ---- a terminal that can be closed ----------------------------------------------------------
class Terminal:
    """A child process whose stdin/stdout/stderr and controlling terminal are a fresh pty,
    in a session of its own (as a login shell's job). ``close()`` closes the pty's master
    side, as a terminal window closing or an ssh connection dropping does: the kernel hangs
    the terminal up, sends SIGHUP to the session leader, and from then on every write to the
    terminal fails with EIO (Linux tty_io.c, __tty_hangup; pty_close). ``output`` is what
    the child wrote before the hangup."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        import fcntl
        import pty
        import subprocess
        import termios
        import threading

        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
            # setsid ran first; the pty becomes this new session's controlling terminal
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master, self.output, self._closed = master, b"", threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import select

        while not self._closed.is_set():  # drain, or the child blocks on a full pty
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed its side
                    return
                if not chunk:
                    return
                self.output += chunk

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        os.close(self.master)

    def kill(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# ---- waiting on a condition -----------------------------------------------------------------
def wait_until(cond, timeout: float, what: str, poll: float = 0.05, alive=None):
    """Poll ``cond()`` until it returns something truthy (returned) or ``timeout`` seconds
    pass (AssertionError naming ``what``). ``alive`` (e.g. ``lambda: proc.poll() is None``)
    ends the wait early, with the same error, once the process it watches has exited.
    Tests wait on conditions with a deadline, never sleep-then-assert: a loaded 2-core
    machine may take seconds for what takes milliseconds alone."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if alive is not None and not alive():
            value = cond()  # it may have happened just before the exit
            if value:
                return value
            raise AssertionError(f"the process exited before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def metrics_steps(run_dir: Path) -> list[int]:
    """The ``step`` of every complete training row of RUN/metrics.jsonl (rows with a loss),
    in file order; a row cut short by a kill is skipped."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    steps = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "loss" in row and "step" in row:
            steps.append(int(row["step"]))
    return steps


# ---- a tiny byte-level training run ---------------------------------------------------------
BYTE_EOS = 256  # byte-level "tokenizer": ids 0..255 are bytes, 256 ends a document


def make_byte_data(folder: Path, n_files: int = 12) -> Path:
    """Real text: stdlib .py files as bytes, BYTE_EOS-separated; ~5% held out for val."""
    from cgpt.train.data.shards import write_token_data

    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for f in sorted(root.glob("*.py"))[:n_files]:
        parts += [np.frombuffer(f.read_bytes(), np.uint8).astype(np.int64), np.array([BYTE_EOS])]
    toks = np.concatenate(parts)
    cut = int(len(toks) * 0.95)
    write_token_data(
        folder, toks[:cut], toks[cut:], vocab_size=257, eos_id=BYTE_EOS, source="stdlib-bytes"
    )
    return folder


def make_cfg(
    tmp: Path, data: Path, out: str = "run", steps: int = 30, batch: int = 8, **runtime
) -> dict:
    """A run config (dict) for a 2-layer fp32 model on ``data`` (make_byte_data), out_dir
    ``tmp/out``; ``runtime`` overrides the runtime section."""
    rt = {
        "out_dir": str(tmp / out),
        "micro_batch": 2,
        "zero_stage": 0,
        "precision": "fp32",
        "eval_every": 10,
        "eval_batches": 2,
        "save_every": 10,
        "log_every": 10,
        "wandb": "off",
        "seed": 7,
        "export_hf": False,
    }
    rt.update(runtime)
    return {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 257},
        "data": {"path": str(data)},
        "plan": {
            "params": 30000,
            "seq_len": 32,
            "tokens": 32 * batch * steps,
            "steps": steps,
            "global_batch_seqs": batch,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 3,
            "decay_steps": steps - 3,
        },
        "runtime": rt,
    }


def write_run_config(tmp: Path, d: dict, name: str = "run.yaml") -> Path:
    """``d`` as YAML in ``tmp/name``; returns the path."""
    p = tmp / name
    p.write_text(yaml.safe_dump(d))
    return p


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    """``key`` of every RUN/metrics.jsonl row that has it, in file order."""
    from cgpt.train.metrics import read_metrics

    return [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


def tree_digest(folder: Path) -> str:
    """sha256 over every path name and file content below ``folder``: equal iff untouched."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- a tiny sweep ---------------------------------------------------------------------------
# a held-out target beyond SWEEP_SIZES, and a loss law (paired with paper_law) that tests
# put ladder losses on
SWEEP_TARGET = {"n_layer": 3, "n_embd": 32, "n_head": 2}
SWEEP_LAW = dict(a=1e6, b=0.12, c=1.0)

SWEEP_SIZES = [
    {"n_layer": 1, "n_embd": 8, "n_head": 2},
    {"n_layer": 1, "n_embd": 16, "n_head": 2},
    {"n_layer": 2, "n_embd": 16, "n_head": 2},
]


def make_sweep_data(folder: Path) -> Path:
    """Real text: bytes of a few stdlib sources (vocab 256 + EOS)."""
    from cgpt.train.data.shards import write_token_data

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        np.frombuffer((root / n).read_bytes(), np.uint8).astype(np.uint16)
        for n in ("argparse.py", "typing.py", "inspect.py", "pathlib.py")
    ]
    toks = np.concatenate([np.append(d, 256) for d in docs])
    cut = int(len(toks) * 0.95)
    write_token_data(
        folder, toks[:cut], toks[cut:], vocab_size=257, eos_id=256, source="stdlib-bytes"
    )
    return folder


def sweep_dict(tmp: Path, data_dir: Path, **kw) -> dict:
    """A sweep file (dict) of SWEEP_SIZES on ``data_dir``, out_dir ``tmp/sweep``; ``kw``
    replaces top-level keys."""
    d = {
        "name": "tiny",
        "out_dir": str(tmp / "sweep"),
        "data": {"path": str(data_dir)},
        "model": {"seq_len": 32},
        "tokens_per_param": 2,
        "sizes": [dict(s) for s in SWEEP_SIZES],
        "plan": {"global_batch_seqs": 8, "lr": 3e-3, "min_steps": 10},
        "runtime": {
            "micro_batch": 8,
            "precision": "fp32",
            "zero_stage": 0,
            "device": "cpu",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 10,
            "log_every": 10,
            "wandb": "off",
            "export_hf": False,
        },
    }
    d.update(kw)
    return d


def write_sweep(tmp: Path, d: dict) -> Path:
    """``d`` as YAML in ``tmp/sweep.yaml``; returns the path."""
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


# ---- a launch config ------------------------------------------------------------------------
def write_launch_config(tmp_path: Path, global_batch=12, micro_batch=4, **plan) -> Path:
    """``tmp_path/run.yaml``: a small run config for `cgpt launch` tests (data folder
    ``tmp_path/data`` need not exist); ``plan`` overrides plan keys."""
    cfg = {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 256},
        "data": {"path": str(tmp_path / "data")},
        "plan": {
            "params": 30000,
            "seq_len": 32,
            "tokens": 100000,
            "steps": 10,
            "global_batch_seqs": global_batch,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 2,
            "decay_steps": 8,
            **plan,
        },
        "runtime": {"out_dir": str(tmp_path / "run"), "micro_batch": micro_batch},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- token data without a file --------------------------------------------------------------
class ZeroTokens:
    """A stand-in token array: a huge length, reads return zeros (no file, no memory)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, sl):
        return np.zeros(len(range(*sl.indices(self.n))), np.uint16)


def zero_token_data(n_windows: int, seq: int):
    """A TokenData of ``n_windows`` train windows of ``seq`` tokens, all zeros, vocab 1000."""
    from cgpt.train.data.shards import TokenData

    meta = {"vocab_size": 1000, "eos_id": 0, "dtype": "uint16"}
    return TokenData(Path("fake"), meta, ZeroTokens(n_windows * seq + 1), ZeroTokens(seq * 4 + 1))
