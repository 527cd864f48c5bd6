"""`cgpt export SRC OUT` and `cgpt import-hf HF_DIR OUT`.

export SRC may be (resolved and loaded by cgpt.train.loop.consolidate):
  - a cgpt model file (``.safetensors`` written by ``cgpt.model.io.save_model``);
  - a run folder: ``RUN/model.safetensors`` (final weights), else (a preempted, stopped or
    diverged run, or one resumed after its final save) the newest complete checkpoint;
  - a checkpoint folder ``RUN/checkpoints/step-N`` as the trainer writes it (DeepSpeed's
    files at any ZeRO stage and rank count), consolidated into one model.
The tokenizer is ``--tokenizer DIR``; for a folder SRC also ``SRC/tokenizer/``, the run's
``config.yaml`` ``data.tokenizer``, or the tokenizer recorded in the data folder's
``meta.json``; without one only the model is exported (a note says so).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from cgpt.model.errors import CgptError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a Hugging Face GPT2LMHeadModel folder from a model/run",
        description="Export a cgpt model, run folder or checkpoint as a Hugging Face folder "
        "(config.json, model.safetensors, tokenizer) that "
        "AutoModelForCausalLM.from_pretrained loads; verified by comparing logits.",
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="model .safetensors file, run folder or checkpoint folder (RUN/checkpoints/step-N)",
    )
    p.add_argument("out", metavar="OUT", help="output folder (must not exist unless --force)")
    p.add_argument("--tokenizer", metavar="DIR", help="HF tokenizer folder to include")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: as stored)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="split the weights into shards of at most SIZE (e.g. 2GB, 500MB) with "
        "model.safetensors.index.json, as save_pretrained does (default 5GB)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip loading the export with transformers and comparing logits",
    )
    p.set_defaults(func=run_export)

    q = subparsers.add_parser(
        "import-hf",
        help="read a Hugging Face GPT-2 folder into a cgpt model file",
        description="Convert a Hugging Face GPT-2 folder (e.g. a downloaded Cerebras-GPT "
        "checkpoint) into a cgpt model .safetensors file.",
    )
    q.add_argument("src", metavar="HF_DIR", help="folder with config.json + model.safetensors")
    q.add_argument("out", metavar="OUT", help="output model file, ending in .safetensors")
    q.add_argument("--force", action="store_true", help="replace an existing OUT")
    q.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip comparing logits with transformers' load of HF_DIR",
    )
    q.set_defaults(func=run_import)


# ---- commands ------------------------------------------------------------------------------
def run_export(args) -> int:
    from cgpt.model.hf import export_hf
    from cgpt.train.loop.consolidate import find_tokenizer, load_source

    src, out = Path(args.src), Path(args.out)
    if out.exists() and not args.force:  # before the (slow) load, not only inside export_hf
        raise CgptError(f"{out} already exists; pass --force to replace it")
    t0 = time.perf_counter()
    loaded = load_source(src)
    model = loaded.model
    tokenizer = Path(args.tokenizer) if args.tokenizer else find_tokenizer(src)
    if args.dtype:
        model.to(DTYPES[args.dtype])
    if tokenizer is None:
        print(
            f"cgpt export: note: no tokenizer found for {src}; exporting the model only "
            "(pass --tokenizer DIR)",
            file=sys.stderr,
        )
    export_hf(
        model,
        out,
        tokenizer_dir=tokenizer,
        verify=args.verify,
        force=args.force,
        max_shard_size=args.max_shard_size,
    )
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"exported {loaded.what} -> {out} ({model.num_params():,} params, "
        f"{next(model.parameters()).dtype}, {size / 1e6:.1f} MB, "
        f"{'verified against transformers' if args.verify else 'not verified'}, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    return 0


def run_import(args) -> int:
    from cgpt.model.hf import import_hf, save_model

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CgptError(f"OUT must be a .safetensors file name, got {out}")
    if out.exists() and not args.force:
        raise CgptError(f"{out} already exists; pass --force to replace it")
    t0 = time.perf_counter()
    model = import_hf(args.src, verify=args.verify)
    save_model(model, out, force=args.force)
    print(
        f"imported {args.src} -> {out} ({model.num_params():,} params, "
        f"{next(model.parameters()).dtype}, "
        f"{'verified against transformers' if args.verify else 'not verified'}, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    return 0
