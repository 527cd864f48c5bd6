"""Measure HF export/import cost for a published size on this machine (CPU by default).

    python -m cgpt.train.bench.export --size 111M [--dtype float32] [--out /tmp/dir]

Builds GPT(size) with its published shape and random init, then times: save_model (cgpt
model file), export_hf without verification (the write), compare_with_hf (the verification
export_hf runs by default: transformers load + logits on 3 batches), import_hf, and prints
the file sizes, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cgpt.model import GPT, GPTConfig
from cgpt.model.hf import compare_with_hf, export_hf, import_hf, load_model, save_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, round(time.perf_counter() - t, 3)


def bench(size: str, dtype: torch.dtype, workdir: Path) -> dict:
    torch.manual_seed(0)
    model, t_init = _timed(lambda: GPT(GPTConfig.from_name(size)).to(dtype).eval())
    r = {
        "size": size,
        "params": model.num_params(),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "init_s": t_init,
    }
    path, r["save_model_s"] = _timed(save_model, model, workdir / "model.safetensors")
    r["model_file_bytes"] = path.stat().st_size
    _, r["load_model_s"] = _timed(load_model, path)
    out, r["export_write_s"] = _timed(export_hf, model, workdir / "hf", verify=False)
    r["export_bytes"] = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    diff, r["verify_s"] = _timed(compare_with_hf, model, out)
    r["verify_max_abs_logit_diff"] = diff
    _, r["export_verified_total_s"] = _timed(export_hf, model, workdir / "hf", force=True)
    _, r["import_hf_s"] = _timed(import_hf, out)
    return r


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="111M")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--out", help="work folder (default: a temporary one, deleted after)")
    a = p.parse_args(argv)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="cgpt-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(json.dumps(bench(a.size, DTYPES[a.dtype], work), indent=2))
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
