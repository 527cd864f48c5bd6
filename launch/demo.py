"""`cgpt demo`: the whole pipeline, offline, on a CPU, in minutes.

corpus (the Python standard library's source, present on every machine)
  -> sentencepiece tokenizer -> token shards
  -> a compute-optimal plan for a tiny Cerebras-GPT (20 tokens per parameter)
  -> DeepSpeed training (one CPU process) with metrics, wandb (offline) and a loss plot
  -> evaluation of the exported model with transformers -> a generated sample.

The model shape and runtime settings come from configs/demo-cpu.yaml (a run config the
planner reproduces; tests check that). Re-running reuses the tokenizer and the token shards
when they were built from the same corpus and settings, resumes an unfinished run, and
starts a new run folder after a finished one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from cgpt.configs import shipped
from cgpt.model.errors import CgptError
from cgpt.train.config import RunConfig, load_run_config, write_text_atomic
from cgpt.train.data.sources import stdlib_files
from cgpt.train.data.tokenizer import load_tokenizer, train_tokenizer
from cgpt.train.exit_codes import Preempted

DEFAULT_CONFIG = shipped("demo-cpu.yaml")
CORPUS = "stdlib"
VAL_FRACTION = 0.02  # ~15 of the ~730 stdlib files: enough val tokens for a stable loss
STAMP = "demo.json"  # what the reusable steps were built from
STEPS = 7
TOKENS_PER_PARAM = 20  # Chinchilla (docs/REFERENCE.md, Training recipe)


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self):
        self.t0 = self.t = time.time()
        self.n = 0

    def start(self, what: str) -> None:
        self.n += 1
        self.t = time.time()
        print(f"\n[{self.n}/{STEPS}] {what}", flush=True)

    def done(self, what: str) -> None:
        print(f"      {what} ({time.time() - self.t:.1f}s)", flush=True)


# ---- configuration -------------------------------------------------------------------------


def demo_config(config: str | Path | None = None) -> RunConfig:
    """The demo's run config (configs/demo-cpu.yaml unless `config`)."""
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise CgptError(
            f"demo config {str(path)!r} not found"
            + ("" if config else "; run cgpt demo from a source checkout or pass --config")
        )
    return load_run_config(path)


def plan_demo(base: RunConfig, out: Path, max_steps: int | None):
    """Re-plan the config's shape with the planner (Chinchilla: tokens_per_param × params)
    and point data, tokenizer and run folder into `out`."""
    # deferred: the planner (~45 ms) stays off every cgpt command's start
    from cgpt.train.plan.planner import plan_for_shape

    m, p = base.model, base.plan
    plan = plan_for_shape(
        m.n_layer,
        m.n_embd,
        m.n_head,
        seq_len=p.seq_len,
        vocab_size=m.vocab_size,
        tokens_per_param=TOKENS_PER_PARAM,
        name=p.name,
    )
    runtime = base.runtime.model_dump()
    runtime.update(max_steps=max_steps)
    cfg = plan.to_run_config(str(out / "data"), str(out / "tokenizer"), runtime)
    return plan, cfg


def _read_stamp(out: Path) -> dict:
    try:
        return json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(out: Path, key: str, value: dict) -> None:
    stamp = _read_stamp(out)
    stamp[key] = value
    write_text_atomic(out / STAMP, json.dumps(stamp, indent=1) + "\n")


# ---- the reusable steps --------------------------------------------------------------------


def corpus_spec(corpus_docs: int | None) -> str:
    if corpus_docs is not None and corpus_docs <= 0:
        raise CgptError(f"--corpus-docs must be at least 1, got {corpus_docs}")
    return CORPUS if corpus_docs is None else f"{CORPUS}:max_docs={corpus_docs}"


def describe_corpus(spec: str) -> str:
    files = stdlib_files()
    size = sum(f.stat().st_size for f in files) / 1e6
    return f"{spec}: {len(files)} Python files, {size:.1f} MB in {files[0].parent}"


def ensure_tokenizer(out: Path, spec: str, vocab_size: int, seed: int):
    """Reuse out/tokenizer when it was trained on `spec` with `vocab_size`; else train it."""

    want = {"corpus": spec, "vocab_size": vocab_size, "seed": seed}
    folder = out / "tokenizer"
    if _read_stamp(out).get("tokenizer") == want:
        try:
            tok = load_tokenizer(folder)
            if tok.vocab_size == vocab_size:
                return tok, True
        except CgptError:
            pass  # damaged or missing: train it again
    tok = train_tokenizer(spec, vocab_size, folder, seed=seed, force=True)
    _write_stamp(out, "tokenizer", want)
    return tok, False


def ensure_data(out: Path, spec: str, tok):
    """Reuse out/data when it holds `spec` tokenized by `tok` and verifies; else prepare."""
    # deferred: numpy and multiprocessing (~0.15 s); every cgpt command imports this module
    from cgpt.train.data.prepare import prepare
    from cgpt.train.data.shards import open_token_data

    want = {"corpus": spec, "tokenizer": tok.fingerprint, "val_fraction": VAL_FRACTION}
    folder = out / "data"
    if _read_stamp(out).get("data") == want:
        try:
            data = open_token_data(folder, verify=True)
            if data.fingerprint == tok.fingerprint:
                return data.meta, True
        except CgptError:
            pass
    meta = prepare(spec, tok.dir, folder, val_fraction=VAL_FRACTION, force=True)
    _write_stamp(out, "data", want)
    return meta, False


# ---- run folders ---------------------------------------------------------------------------


def _status(run_dir: Path) -> str | None:
    """None: no run there; 'unfinished'; or the summary's status."""
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "unfinished"


def _same_run(run_dir: Path, cfg: RunConfig) -> bool:
    import yaml

    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    new = cfg.to_dict()
    return all(old.get(k) == new[k] for k in ("model", "data", "plan"))


def choose_run_dir(out: Path, cfg: RunConfig, fresh: bool) -> tuple[Path, bool]:
    """(run folder, resume?): continue the newest run if it is unfinished (or stopped
    early) and has the same plan; otherwise the next free run, run-2, run-3, ..."""
    dirs = [out / "run"] + sorted(
        (d for d in out.glob("run-*") if d.name[4:].isdigit()), key=lambda d: int(d.name[4:])
    )
    existing = [d for d in dirs if _status(d) is not None]
    if existing and not fresh:
        last = existing[-1]
        if _status(last) != "completed" and _same_run(last, cfg):
            return last, True
    if not existing:
        return out / "run", False
    last = existing[-1]
    n = 2 if last.name == "run" else int(last.name[4:]) + 1
    return out / f"run-{n}", False


# ---- evaluation and the sample ---------------------------------------------------------------


def evaluate_hf(hf_dir: Path, cfg: RunConfig) -> float:
    """Mean val loss of the exported model, run by transformers, on the trainer's val batches."""
    # deferred: torch and transformers (the demo's last check only; cgpt demo --help must not)
    import torch
    from transformers import AutoModelForCausalLM

    from cgpt.train.data.loader import TokenLoader

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert cfg.data.path is not None  # the demo config names its data folder
    val = TokenLoader(cfg.data.path, cfg.plan.seq_len, seed=cfg.runtime.seed, split="val")
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in val.val_batches(cfg.runtime.eval_batches, cfg.runtime.micro_batch):
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1
            )
            total, n = total + loss.item() * x.size(0), n + x.size(0)
    return total / max(n, 1)


def sample_hf(hf_dir: Path, prompt: str, max_new_tokens: int = 80, seed: int = 0) -> str:
    """Load the export with transformers' Auto classes and sample a continuation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=40,
            temperature=0.8,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.eos_token_id,
        )
    text = tok.decode(out[0], skip_special_tokens=True)
    assert isinstance(text, str)  # one sequence in, one string out (a batch gives a list)
    return text


# ---- the pipeline --------------------------------------------------------------------------


def run_demo(
    out: str = "runs/demo",
    config: str | None = None,
    max_steps: int | None = None,
    corpus_docs: int | None = None,
    fresh: bool = False,
    prompt: str = "def ",
) -> dict:
    """Run every step; returns the paths and numbers it printed (tests read them)."""
    steps, out_dir = _Steps(), Path(out).resolve()
    base = demo_config(config)
    spec = corpus_spec(corpus_docs)
    plan, cfg = plan_demo(base, out_dir, max_steps)
    out_dir.mkdir(parents=True, exist_ok=True)

    steps.start("corpus: the Python standard library's source (offline)")
    steps.done(describe_corpus(spec))

    steps.start(f"tokenizer: sentencepiece BPE, {cfg.model.vocab_size} tokens")
    tok, reused = ensure_tokenizer(out_dir, spec, cfg.model.vocab_size, seed=0)
    steps.done(f"{'reused' if reused else 'trained'} {tok.dir}")

    steps.start("token shards")
    meta, reused = ensure_data(out_dir, spec, tok)
    train_tokens = meta["splits"]["train"]["tokens"]
    steps.done(
        f"{'reused' if reused else 'wrote'} {out_dir / 'data'}: {train_tokens:,} train / "
        f"{meta['splits']['val']['tokens']:,} val tokens"
    )

    steps.start("plan: a compute-optimal tiny Cerebras-GPT")
    run_dir, resume = choose_run_dir(out_dir, cfg, fresh)
    cfg.runtime.out_dir = str(run_dir)
    _print_plan(plan, cfg, train_tokens)
    run_yaml = out_dir / "run.yaml"
    cfg.save(run_yaml)
    steps.done(f"run config {run_yaml}")

    steps.start(f"train with DeepSpeed on the CPU ({'resuming ' if resume else ''}{run_dir})")
    # deferred: imports torch and deepspeed (cgpt demo --help must not)
    from cgpt.train.loop.trainer import train

    summary = train(cfg, resume=resume)
    if summary["status"] == "preempted":
        raise Preempted(f"training was interrupted; continue with: cgpt demo --out {out}")
    steps.done(
        f"{summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
        f"train loss {summary['loss']:.3f}, val loss {summary['val_loss']:.3f}"
    )

    hf_dir = run_dir / "hf"
    steps.start("evaluate the Hugging Face export with transformers")
    hf_loss = evaluate_hf(hf_dir, cfg)
    uniform = math.log(cfg.model.vocab_size)
    steps.done(
        f"val loss {hf_loss:.4f} (trainer: {summary['val_loss']:.4f}), perplexity "
        f"{math.exp(hf_loss):.1f}; a uniform guess scores {uniform:.2f}"
    )

    steps.start(f"generate with transformers from {prompt!r}")
    text = sample_hf(hf_dir, prompt)
    steps.done("sample:\n" + "\n".join("        | " + line for line in text.splitlines()))
    result = _final_paths(run_dir, run_yaml)
    result.update(
        summary=summary,
        hf_val_loss=hf_loss,
        sample=text,
        plan=plan.to_json(),
        resumed=resume,
        wall_s=time.time() - steps.t0,
    )
    _print_paths(result)
    return result


def _print_plan(plan, cfg: RunConfig, train_tokens: int) -> None:
    p = cfg.plan
    print(
        f"      model {plan.model.n_layer} layers x {plan.model.n_embd} wide, "
        f"{plan.model.n_head} head(s), vocab {plan.model.vocab_size}: {plan.params:,} params"
    )
    print(
        f"      {p.tokens:,} tokens ({p.tokens / plan.params:.1f} per param) = {p.steps} steps "
        f"x {p.global_batch_seqs} seqs x {p.seq_len}; peak LR {p.lr:g}, warmup "
        f"{p.warmup_steps}, {p.decay} decay to {p.min_lr:g}"
    )
    if p.tokens > train_tokens:
        print(
            f"      the corpus has {train_tokens:,} train tokens: "
            f"{p.tokens / train_tokens:.2f} epochs"
        )
    if cfg.runtime.max_steps and cfg.runtime.max_steps < p.steps:
        print(f"      --max-steps {cfg.runtime.max_steps}: stopping early")


def _final_paths(run_dir: Path, run_yaml: Path) -> dict:
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    return {
        "run_dir": run_dir,
        "run_yaml": run_yaml,
        "loss_png": run_dir / "loss.png",
        "metrics": run_dir / "metrics.jsonl",
        "hf_dir": run_dir / "hf",
        "wandb_run": wandb_runs[-1] if wandb_runs else None,
    }


def _print_paths(r: dict) -> None:
    wandb = (
        f"{r['wandb_run']}  (upload: wandb sync {r['wandb_run']})"
        if r["wandb_run"]
        else "off (runtime.wandb)"
    )
    print(
        f"\ncgpt demo: done in {r['wall_s'] / 60:.1f} min\n"
        f"  loss plot        {r['loss_png']}\n"
        f"  metrics          {r['metrics']}\n"
        f"  wandb (offline)  {wandb}\n"
        f"  Hugging Face     {r['hf_dir']}  (AutoModelForCausalLM.from_pretrained)\n"
        f"  run config       {r['run_yaml']}  (cgpt train / cgpt launch take it)",
        flush=True,
    )
