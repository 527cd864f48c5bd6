"""Files follow the umask (issue 22 item 4): what cgpt writes for people to read (data folders,
run folders with hf/, model.safetensors, config.yaml, summary.json, loss.png, metrics,
checkpoints, exports, eval results, sbatch scripts) gets the mode the user's umask gives an
ordinary file or folder; temporary files stay private until they are published."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import child_env, make_cfg, make_tokenizer

BIN = Path(sys.executable).parent


def _wrong_modes(root: Path, mask: int) -> list[str]:
    """Paths under ``root`` (itself included) whose mode is not what ``mkdir``/``open`` give
    under ``mask`` (an executable file may have the umask's executable mode)."""
    bad = []
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode & 0o777
        ok = mode == 0o777 & ~mask if p.is_dir() else mode in (0o666 & ~mask, 0o777 & ~mask)
        if not ok:
            bad.append(f"{oct(mode)} {p.relative_to(root.parent)}")
    return bad


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok", vocab_size=280)


@pytest.mark.slow  # five real cgpt commands per umask
@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_everything_cgpt_writes_follows_the_umask(mask, tok, tmp_path):
    d = make_cfg(tmp_path, tmp_path / "data", out="run", steps=4, save_every=4, eval_every=4)
    d["model"]["vocab_size"] = 280
    d["runtime"]["export_hf"] = True  # RUN/hf/
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(d))
    sbatch = "from cgpt.launch.slurm import write_sbatch; write_sbatch('#!/bin/sh\\n', 'jobs')"
    script = " && ".join(
        [
            f"umask {mask:03o}",
            f"cgpt prepare --input stdlib:max_docs=12 --tokenizer {tok} --out data",
            "cgpt train cfg.yaml",
            "cgpt export run exp --no-verify",
            "cgpt eval run --data data --out results.json",
            f'{sys.executable} -c "{sbatch}"',
        ]
    )
    env = child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        ["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for must in ("run/hf/model.safetensors", "run/loss.png", "run/summary.json", "exp"):
        assert (tmp_path / must).exists(), must
    bad = []
    for out in ("data", "run", "exp", "results.json", "jobs"):
        bad += _wrong_modes(tmp_path / out, mask)
    assert not bad, f"umask {mask:03o}: " + ", ".join(bad[:12])
    assert (tmp_path / "jobs" / "slurm.sbatch").stat().st_mode & 0o777 == 0o777 & ~mask


def test_temporaries_are_private_until_published(tmp_path):
    """Under umask 022 a folder built by atomic_dir and a file by atomic_path are 0700/0600
    while written (others cannot read half a model) and 0755/0644 once published."""
    from cgpt.model import files
    from cgpt.model.io import atomic_dir

    old = os.umask(0o022)
    try:
        assert files.umask() == 0o022 and files.file_mode() == 0o644
        with atomic_dir(tmp_path / "out") as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o700
            with files.atomic_path(tmp / "w.bin") as part:
                assert part.stat().st_mode & 0o777 == 0o600
                part.write_bytes(b"x")
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "out" / "w.bin").stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    finally:
        os.umask(old)
