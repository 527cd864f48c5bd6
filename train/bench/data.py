"""Data pipeline benchmark: ``python -m cgpt.train.bench.data [--scale 4]``.

Prints, measured in one run on this machine:
1. ``prepare`` throughput (MB/s, tokens/s) beside the raw sentencepiece ``encode_as_ids``
   throughput on the same text, and the ratio to raw × processes used (goal >= 0.7);
2. peak RSS of ``prepare`` (run in a subprocess) on the default corpus and on one
   ``--scale`` times larger: it should stay flat;
3. loader batches/s against the step time of a tiny CPU training step (goal >= 50×).
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cgpt.train.data.prepare import available_cores
from cgpt.train.data.sources import iter_documents
from cgpt.train.data.tokenizer import train_tokenizer

_CHILD = """
import json, resource, sys
from cgpt.train.data.prepare import prepare
m = prepare(sys.argv[1], sys.argv[2], sys.argv[3], num_proc=int(sys.argv[4]))
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"peak_rss_mb": peak / 1024, "main_rss_mb":
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **m["_stats"],
    "tokens": m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]}))
"""


def _raw_encode(tok, docs) -> tuple[float, int, int]:
    nbytes = sum(len(d.encode()) for d in docs)
    t0 = time.perf_counter()
    ntok = sum(len(tok.sp.encode_as_ids(d)) for d in docs)
    return time.perf_counter() - t0, nbytes, ntok


def _prepare_child(source: str, tok_dir: Path, out: Path, num_proc: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, source, str(tok_dir), str(out), str(num_proc)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def _big_corpus(folder: Path, scale: int) -> str:
    """The stdlib corpus written `scale` times as jsonl files (one document per line)."""

    folder.mkdir(parents=True)
    docs = list(iter_documents("stdlib"))
    for k in range(scale):
        with open(folder / f"part{k:03d}.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
    return str(folder)


def bench_prepare(work: Path, tok, num_proc: int, scale: int) -> None:
    docs = list(iter_documents("stdlib"))
    raw_s, nbytes, ntok = _raw_encode(tok, docs)
    raw_mbs = nbytes / 1e6 / raw_s
    small = _prepare_child("stdlib", Path(tok.dir), work / "d1", num_proc)
    print(
        f"raw sentencepiece encode_as_ids (1 core): {raw_mbs:.2f} MB/s, "
        f"{ntok / raw_s:,.0f} tokens/s on {nbytes / 1e6:.1f} MB"
    )
    print(
        f"prepare stdlib ({num_proc} procs): {small['mb_per_s']:.2f} MB/s, "
        f"{small['tokens_per_s']:,.0f} tokens/s, wall {small['wall_s']:.1f} s -> "
        f"{small['mb_per_s'] / (raw_mbs * num_proc):.2f} of raw x {num_proc} "
        f"({small['mb_per_s'] / raw_mbs:.2f} x raw)"
    )
    one_proc = _prepare_child("stdlib", Path(tok.dir), work / "d0", 1)
    raw2_s, _, _ = _raw_encode(tok, docs)  # again, right after: the machine may be shared
    print(
        f"prepare stdlib (1 proc): {one_proc['mb_per_s']:.2f} MB/s -> "
        f"{one_proc['mb_per_s'] / (nbytes / 1e6 / raw2_s):.2f} of raw (1 core, re-measured "
        f"{nbytes / 1e6 / raw2_s:.2f} MB/s)"
    )
    # the same kind of input (jsonl) at two sizes, so only the size differs
    one = _prepare_child(_big_corpus(work / "one", 1), Path(tok.dir), work / "d2", num_proc)
    big = _prepare_child(_big_corpus(work / "big", scale), Path(tok.dir), work / "d3", num_proc)
    for name, r in (("stdlib x1 jsonl", one), (f"stdlib x{scale} jsonl", big)):
        print(
            f"peak RSS {name}: {r['peak_rss_mb']:.0f} MB (largest process) for "
            f"{r['tokens']:,} tokens, {r['mb_per_s']:.2f} MB/s"
        )
    print(f"peak RSS stdlib (files): {small['peak_rss_mb']:.0f} MB")


def bench_loader(data_dir: Path, seq_len: int = 256, batch: int = 8, steps: int = 20) -> None:
    # deferred: torch, for the loader bench only (the prepare bench runs without it)
    import torch

    from cgpt.model import GPT, GPTConfig
    from cgpt.train.data.loader import TokenLoader

    ld = TokenLoader(str(data_dir), seq_len, seed=0)
    ld.next_step(batch, batch)
    t0 = time.perf_counter()
    for _ in range(200):
        ld.next_step(batch, batch)
    load_s = (time.perf_counter() - t0) / 200
    cfg = GPTConfig(
        n_layer=2, n_embd=64, n_head=2, n_positions=seq_len, vocab_size=ld.data.vocab_size
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ((x, y),) = ld.next_step(batch, batch)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = (time.perf_counter() - t0) / steps
    print(
        f"loader: {1 / load_s:,.0f} batches/s ({batch}x{seq_len}); tiny CPU train step "
        f"(2 layers, width 64): {step_s * 1e3:.1f} ms -> loader is {step_s / load_s:,.0f}x "
        "faster than the trainer consumes"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--num-proc", type=int, default=None)
    ap.add_argument("--scale", type=int, default=4, help="size of the big corpus vs stdlib")
    args = ap.parse_args(argv)

    num_proc = args.num_proc or available_cores()
    with tempfile.TemporaryDirectory(prefix="cgpt-bench-") as tmp:
        work = Path(tmp)
        tok = train_tokenizer("stdlib:max_docs=300", args.vocab_size, work / "tok")
        bench_prepare(work, tok, num_proc, args.scale)
        bench_loader(work / "d1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
