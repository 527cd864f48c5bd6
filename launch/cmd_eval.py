"""`cgpt eval SRC`: lm-evaluation-harness tasks (the Cerebras-GPT paper's suite by default)
and/or the held-out loss of a prepared data folder. The work is cgpt.train.eval.runner's."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from cgpt.launch.options import Option, add_options
from cgpt.model.errors import CgptError
from cgpt.train.checks import check_positive
from cgpt.train.eval.paper import SUITE, SUITES

EPILOG = """\
SRC is a cgpt model file, a run folder, a checkpoint folder (RUN/checkpoints/step-N), a
Hugging Face GPT-2 folder (e.g. a local copy of cerebras/Cerebras-GPT-111M) or hf:NAME (the
Hub). A cgpt model is exported to a temporary Hugging Face folder (verified against its own
logits) and lm-eval's HFLM runs on it: scores equal `lm_eval --model hf --model_args
pretrained=FOLDER` with the same tasks, --num-fewshot, --limit, --batch-size, --device and
--dtype. The temporary folder is under $TMPDIR (it needs the model's size in free space) and
is removed at the end.

The suite cerebras-gpt is the paper's seven tasks (hellaswag, piqa, winogrande,
lambada_openai, arc_easy, arc_challenge, openbookqa); acc and acc_norm are both reported,
acc is the paper's metric and its 7-task average. When the model's shape is a published
size, or with --compare-paper SIZE, the paper's 0-shot row (docs/REFERENCE.md) is printed
next to ours.

Offline: tasks whose datasets are Hub datasets need the Hub or the local cache; a local task
YAML (dataset_path: json, dataset_kwargs: {data_files: ...}) in --include-path DIR needs
neither. --data DIR gives the held-out cross-entropy in nats/token and bits/byte.

lm-eval's own flag names are accepted too: --output_path (-o) PATH (a FILE.json is written
as it is named; a folder gets PATH/MODEL/results_DATE.json as lm-eval writes it), --log_samples
(-s; lm-eval's samples_TASK_DATE.jsonl beside the results, written by lm-eval's own tracker),
--model hf, --model_args pretrained=SRC,dtype=D,tokenizer=DIR,batch_size=B,device=D
(comma- or space-separated), --batch_size, --num_fewshot, --include_path, --bootstrap_iters.
The results JSON carries lm-eval's results, versions, n-shot, configs, config, groups and
higher_is_better blocks at the top level, where lm-eval's results file has them, next to
cgpt's own (model, settings, tasks, suite, paper, heldout).

examples:
  cgpt eval runs/111m                                   # the paper's suite, 0-shot
  cgpt eval runs/111m --num-fewshot 5 --out r5.json
  cgpt eval ~/Cerebras-GPT-111M --tasks lambada_openai --limit 200
  cgpt eval runs/demo --tasks my_task --include-path my_tasks/
  cgpt eval runs/demo --data data/pile-val --split val
  cgpt eval --model hf --model_args pretrained=runs/111m,dtype=float32 --tasks piqa \
      --output_path results/ --log_samples                # lm-eval's spelling
"""
# lm-eval's --model_args keys that mean something here, and our flag for each
MODEL_ARGS = {
    "pretrained": "src",
    "dtype": "dtype",
    "tokenizer": "tokenizer",
    "batch_size": "batch_size",
    "device": "device",
}


def _limit(text: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return int(v) if v >= 1 and v == int(v) else v


def _batch(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or 'auto': {text!r}") from None


DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def _add_lm_eval_spellings(p) -> None:
    p.add_argument(
        "--output_path",
        "-o",
        metavar="PATH",
        help="lm-eval's spelling: FILE.json (as --out), or a folder: PATH/MODEL/"
        "results_DATE.json as lm-eval writes it",
    )
    p.add_argument(
        "--log_samples",
        "-s",
        action="store_true",
        help="write lm-eval's per-sample records (samples_TASK_DATE.jsonl) beside the "
        "results file; needs --output_path or --out",
    )
    p.add_argument(
        "--model",
        choices=["hf"],
        help="lm-eval's model type; cgpt evaluates through lm-eval's HFLM, so only hf",
    )
    p.add_argument(
        "--model_args",
        nargs="+",
        metavar="K=V",
        help="lm-eval's spelling of SRC and options: "
        + ",".join(f"{k}=..." for k in MODEL_ARGS)
        + " (comma- or space-separated)",
    )


def _which_options(suites) -> list[Option]:
    """--suite or --tasks (one of them)."""
    return [
        (
            ("--suite",),
            dict(
                choices=sorted(suites),
                help="a named task suite (default when neither --tasks nor --data: cerebras-gpt)",
            ),
        ),
        (
            ("--tasks",),
            dict(metavar="T1,T2", help="comma-separated lm-eval task names (suite names allowed)"),
        ),
    ]


EVAL_OPTIONS: list[Option] = [
    (
        ("--include-path", "--include_path"),
        dict(metavar="DIR", help="folder of your own lm-eval task YAML files"),
    ),
    (
        ("--num-fewshot", "--num_fewshot"),
        dict(
            type=int,
            metavar="N",
            help="few-shot examples per question (the paper: 0 and 5; default: the "
            "task's own, 0 for the paper's tasks)",
        ),
    ),
    (
        ("--limit",),
        dict(
            type=_limit,
            metavar="N",
            help="evaluate only the first N examples of each task (a fraction if < 1)",
        ),
    ),
    (
        ("--batch-size", "--batch_size"),
        dict(
            type=_batch,
            default=None,
            metavar="B",
            help="lm-eval batch size, an integer or auto (default 16); for --data: "
            "sequences per forward pass",
        ),
    ),
    (
        ("--device",),
        dict(metavar="D", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)"),
    ),
    (
        ("--dtype",),
        dict(choices=DTYPE_CHOICES, help="evaluate in this dtype (default: as stored)"),
    ),
    (
        ("--tokenizer",),
        dict(metavar="DIR", help="tokenizer folder (default: the run's, or the HF folder's own)"),
    ),
    (("--out",), dict(metavar="FILE", help="write the results JSON here")),
    (("--force",), dict(action="store_true", help="replace an existing --out file")),
    (
        ("--compare-paper",),
        dict(
            metavar="SIZE",
            help="compare with this published size's row (111M ... 13B) even when the "
            "shape does not match",
        ),
    ),
    (
        ("--data",),
        dict(metavar="DATA_DIR", help="prepared data folder: held-out nats/token and bits/byte"),
    ),
    (
        ("--split",),
        dict(default="val", choices=["val", "train"], help="split of --data (default val)"),
    ),
    (
        ("--seq-len",),
        dict(
            type=int,
            metavar="N",
            help="window length for --data (default: the model's n_positions)",
        ),
    ),
    (
        ("--bootstrap-iters", "--bootstrap_iters"),
        dict(
            type=int,
            default=100000,
            metavar="N",
            help="lm-eval's bootstrap iterations for stderrs of non-mean metrics "
            "(default 100000 as lm-eval; 0 skips them)",
        ),
    ),
    (
        ("--seed",),
        dict(
            type=int,
            default=1234,
            metavar="N",
            help="seed that picks the few-shot examples (default 1234 as lm-eval)",
        ),
    ),
    (("-v", "--verbose"), dict(action="store_true", help="show lm-eval's logging")),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model with lm-evaluation-harness / held-out bits per byte",
        description="Evaluate any cgpt model (or Hugging Face GPT-2 folder) the way the "
        "Cerebras-GPT paper did: lm-evaluation-harness tasks, side by side with "
        "the paper's table, and held-out loss comparable across tokenizers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        nargs="?",
        help="model file, run folder, checkpoint folder, HF folder, or hf:NAME (or "
        "--model_args pretrained=SRC)",
    )
    _add_lm_eval_spellings(p)
    add_options(p.add_mutually_exclusive_group(), _which_options(SUITES))
    add_options(p, EVAL_OPTIONS)
    p.set_defaults(func=run)


def apply_model_args(args) -> None:
    """Fold lm-eval's --model_args into our options; a key twice with two values, or a
    key we do not take, is one line."""
    for item in ",".join(args.model_args or []).split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in MODEL_ARGS:
            raise CgptError(
                f"--model_args {item!r}: cgpt eval takes "
                + ", ".join(f"{k}=..." for k in MODEL_ARGS)
            )
        dest = MODEL_ARGS[key]
        if key == "dtype":
            if value == "auto":
                continue
            if value not in DTYPE_CHOICES:
                raise CgptError(f"--model_args dtype={value}: choose {', '.join(DTYPE_CHOICES)}")
        parsed: int | str = value
        if key == "batch_size":
            try:
                parsed = _batch(value)
            except argparse.ArgumentTypeError as e:
                raise CgptError(f"--model_args batch_size: {e}") from None
        current = getattr(args, dest)
        if current is not None and current != parsed:
            flag = "SRC" if dest == "src" else "--" + dest.replace("_", "-")
            raise CgptError(f"--model_args {key}={value} contradicts {flag} {current}")
        setattr(args, dest, parsed)
    if not args.src:
        raise CgptError("give the model: SRC, or --model_args pretrained=SRC")


def results_file(args, stamp: str) -> tuple[str | None, bool]:
    """(the results JSON path, whether its folder may be created) from --out/--output_path."""
    if args.out and args.output_path:
        raise CgptError("give --out or --output_path, not both")
    if not args.output_path:
        return args.out, False
    path = Path(args.output_path)
    if path.suffix == ".json":
        return str(path), False
    # lm-eval's folder layout: PATH/<model name sanitized>/results_<date>.json (the regex
    # of lm_eval.utils.sanitize_model_name; not imported: a missing lm-eval is reported later)
    name = re.sub(r"[\"<>:/|\\?*\[\]]+", "__", args.src)
    return str(path / name / f"results_{stamp}.json"), True


def run(args) -> int:
    # deferred: these import torch (cgpt eval --help must not)
    from cgpt.train.eval.harness import parse_task_list
    from cgpt.train.eval.runner import EvalRequest, date_id, format_report, run_eval

    apply_model_args(args)
    stamp = date_id()
    out, make_folder = results_file(args, stamp)

    if args.tasks is not None:
        tasks = parse_task_list(args.tasks)
    elif args.suite:
        tasks = [args.suite]
    else:
        tasks = [] if args.data else [SUITE]
    if args.seq_len is not None:
        check_positive(args.seq_len, "--seq-len", integer=True)
    req = EvalRequest(
        src=args.src,
        tasks=tasks,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=16 if args.batch_size is None else args.batch_size,
        device=args.device,
        dtype=args.dtype,
        tokenizer=args.tokenizer,
        out=out,
        force=args.force,
        make_out_folder=make_folder,
        log_samples=args.log_samples,
        date_id=stamp,
        compare_paper=args.compare_paper,
        data=args.data,
        split=args.split,
        seq_len=args.seq_len,
        bootstrap_iters=args.bootstrap_iters,
        fewshot_seed=args.seed,
        verbose=args.verbose,
    )
    report = run_eval(req)
    print(format_report(report))
    if out:
        print(f"wrote {out}")
    for name in (report.get("samples") or {}).values():
        print(f"wrote {Path(out or '.').parent / name}")
    return 0
