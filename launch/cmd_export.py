"""`cgpt export SRC OUT` and `cgpt import-hf HF_DIR OUT`.

export SRC may be (resolved and loaded by cgpt.train.source.model_source):
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

import re
import sys
import time
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.write_errors import WriteFailed, writable_alternative, writing

DTYPES = ("bfloat16", "float16", "float32")  # torch dtype names (torch loads only to run)


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
    p.add_argument("--dtype", choices=DTYPES, help="cast weights (default: as stored)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export at OUT (never a run, data or source folder)",
    )
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
    # deferred: these import torch (and deepspeed on use); quick verbs must not load them
    from cgpt.model.hf import export_hf
    from cgpt.train.source.model_source import load_source
    from cgpt.train.source.tokenizer import find_tokenizer

    src, out = Path(args.src), Path(args.out)
    if out.exists() and not args.force:  # before the (slow) load, not only inside export_hf
        raise CgptError(f"{out} already exists; pass --force to replace it")
    check_replaceable(src, out)
    t0 = time.perf_counter()
    loaded = load_source(src)
    model = loaded.model
    tokenizer = Path(args.tokenizer) if args.tokenizer else find_tokenizer(src)
    if args.dtype:
        import torch  # deferred: torch is heavy; quick verbs must not load it

        model.to(getattr(torch, args.dtype))
    if tokenizer is None:
        print(
            f"cgpt export: note: no tokenizer found for {src}; exporting the model only "
            "(pass --tokenizer DIR)",
            file=sys.stderr,
        )

    try:
        with writing(out):  # a read-only folder or a full disk: one line, and where to go
            export_hf(
                model,
                out,
                tokenizer_dir=tokenizer,
                verify=args.verify,
                force=args.force,
                max_shard_size=args.max_shard_size,
            )
    except WriteFailed as e:
        raise CgptError(
            f"{e}; {src} is unchanged and nothing was published at {out}. Export into a folder you "
            f"can write to, e.g.: {_elsewhere(args, out)}"
        ) from None
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"exported {loaded.what} -> {out} ({model.num_params():,} params, "
        f"{next(model.parameters()).dtype}, {size / 1e6:.1f} MB, "
        f"{'verified against transformers' if args.verify else 'not verified'}, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    return 0


_EXPORT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
}
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def is_export_folder(folder: Path) -> bool:
    """True for a folder holding only what `cgpt export` writes (config.json, the weights as
    one file or shards + index, generation_config.json, tokenizer files) and at least its
    config and weights: the only kind of folder ``--force`` may replace."""
    # deferred: cgpt.model.hf imports torch (cgpt export --help must not)
    from cgpt.model.hf import TOKENIZER_FILES

    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    names = {p.name for p in entries}
    known = _EXPORT_FILES | set(TOKENIZER_FILES)
    return (
        "config.json" in names
        and bool(names & {"model.safetensors", "model.safetensors.index.json"})
        and all(p.is_file() and not p.is_symlink() for p in entries)
        and all(n in known or _SHARD.fullmatch(n) or n.endswith(".model") for n in names)
    )


def check_replaceable(src: Path, out: Path) -> None:
    """``--force`` replaces a previous export, never the source, a folder holding it, a run
    or data folder or anything else: one line instead (`cgpt export RUN RUN --force` once
    replaced the whole run with its export)."""
    if not (out.exists() or out.is_symlink()):
        return
    s, o = src.resolve(), out.resolve()
    if s == o or o in s.parents:
        raise CgptError(
            f"{out} is the source {src} or holds it; --force replaces only a previous "
            "export: choose another OUT"
        )
    if not is_export_folder(out) and not (out.is_dir() and not any(out.iterdir())):
        raise CgptError(
            f"{out} is not a previous export (it holds files `cgpt export` does not write, "
            "e.g. a run or data folder); --force replaces only an export: choose another OUT"
        )


def _elsewhere(args, out: Path) -> str:
    """This export's command with OUT in a folder the user can write to."""
    import shlex

    argv = ["cgpt", "export", args.src, writable_alternative(out.name)]
    argv += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    argv += ["--dtype", args.dtype] if args.dtype else []
    argv += ["--max-shard-size", args.max_shard_size] + ([] if args.verify else ["--no-verify"])
    return shlex.join(argv)


def run_import(args) -> int:
    # deferred: cgpt.model.hf imports torch (cgpt import-hf --help must not)
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
