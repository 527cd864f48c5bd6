"""``cgpt eval``: every check first, then lm-eval and/or the held-out loss, then the report.

Order (nothing is written, and nothing slow runs, before the cheap checks pass): the output
file, the options, lm-eval's presence, SRC (loaded; its tokenizer against its vocab), the
data folder and its byte count, the task names, every task's dataset and few-shot count;
then the model's verified HF export in a temporary folder, lm-eval on it, the held-out loss,
and the results JSON written atomically at the end.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgpt.model.errors import CgptError
from cgpt.model.files import write_atomic
from cgpt.model.hf import export_hf
from cgpt.train.checks import HF_PREFIX, check_positive
from cgpt.train.data.shards import open_token_data
from cgpt.train.eval import harness
from cgpt.train.eval.heldout import heldout_loss, split_bytes
from cgpt.train.eval.paper import (
    PAPER_METRIC,
    PAPER_SOURCE,
    SUITE,
    SUITE_TASKS,
    compare,
    expand_tasks,
    match_published,
    paper_size,
    suite_average,
)
from cgpt.train.eval.source import EvalSource, open_source
from cgpt.train.provenance import git_revision, version
from cgpt.train.source import hub
from cgpt.train.source.digest import weights_sha256

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESULTS_FORMAT = "cgpt-eval"
RESULTS_VERSION = 2  # 2: lm-eval's own blocks at the top level, as lm-eval writes them
# lm-eval's results blocks that its own results file carries at the top level (lm_eval
# _cli/run.py dumps simple_evaluate's dict less "samples"); ours carry them the same way
LM_EVAL_BLOCKS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "n-samples",
    "higher_is_better",
    "config",
)


@dataclass
class EvalRequest:
    src: str
    tasks: list[str] = field(default_factory=list)  # task or suite names, unexpanded
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int | str = 16
    device: str | None = None
    dtype: str | None = None  # float32 | bfloat16 | float16 | None (as stored)
    tokenizer: str | None = None
    out: str | None = None
    force: bool = False
    make_out_folder: bool = False  # --output_path DIR: create DIR/MODEL/ as lm-eval does
    log_samples: bool = False  # lm-eval's per-sample records beside the results file
    date_id: str | None = None  # names the samples files (default: now, as lm-eval's)
    compare_paper: str | None = None
    data: str | None = None
    split: str = "val"
    seq_len: int | None = None
    bootstrap_iters: int = harness.DEFAULT_BOOTSTRAP
    fewshot_seed: int = harness.DEFAULT_SEEDS["fewshot_random_seed"]
    verbose: bool = False


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_request(req: EvalRequest) -> None:
    if req.out:
        out = Path(req.out)
        if out.exists() and not req.force:
            raise CgptError(f"{out} already exists; pass --force to replace it")
        if out.exists() and out.is_dir():
            raise CgptError(f"--out {out} is a folder; give a file name such as results.json")
        if not out.parent.is_dir() and not req.make_out_folder:
            raise CgptError(f"--out {out}: folder {out.parent} does not exist")
    if req.log_samples and not req.out:
        raise CgptError(
            "--log_samples needs --output_path (or --out): the samples are written beside "
            "the results file"
        )
    if req.log_samples and not req.tasks:
        raise CgptError("--log_samples needs lm-eval tasks (--tasks or --suite)")
    if not req.tasks and not req.data:
        raise CgptError("nothing to evaluate: give --suite, --tasks or --data")
    if req.num_fewshot is not None and req.num_fewshot < 0:
        raise CgptError(f"--num-fewshot must be 0 or more, got {req.num_fewshot}")
    if req.limit is not None:
        check_positive(req.limit, "--limit")
    if isinstance(req.batch_size, int):
        check_positive(req.batch_size, "--batch-size", integer=True)
    if req.bootstrap_iters < 0:
        raise CgptError(f"--bootstrap-iters must be 0 or more, got {req.bootstrap_iters}")
    if req.dtype is not None and req.dtype not in DTYPES:
        raise CgptError(f"--dtype {req.dtype!r}: choose one of {', '.join(DTYPES)}")
    dev = req.device or default_device()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CgptError(f"--device {dev}: no CUDA device is available here; use --device cpu")
    if req.compare_paper:
        paper_size(req.compare_paper)  # CgptError listing the valid sizes
    if req.split not in ("train", "val"):
        raise CgptError(f"--split {req.split!r}: choose train or val")


def run_eval(req: EvalRequest, log=None) -> dict:
    """Evaluate ``req.src``; returns the report (what ``--out`` holds). ``log`` gets progress
    lines (default: stderr)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    _check_request(req)
    names = expand_tasks(req.tasks)
    tm = tasks = None
    if names:
        harness.require_lm_eval()
        if not req.src.startswith(HF_PREFIX) and not Path(req.src).exists():
            open_source(req.src)  # the one-line "does not exist" before indexing any task
        tm = harness.task_manager_for(names, req.include_path)  # names, before a big load
    device = req.device or default_device()
    src = open_source(req.src, req.tokenizer, need_tokenizer=bool(names))
    data, nbytes = None, None
    if req.data:
        data = open_token_data(req.data, verify="size")
        vocab = (src.shape or {}).get("vocab_size")
        if vocab and data.vocab_size > vocab:
            raise CgptError(
                f"the data in {data.dir} was tokenized with a vocab of "
                f"{data.vocab_size} but the model's vocab_size is {vocab}: not "
                "made with this model's tokenizer"
            )
        nbytes = split_bytes(data, req.split, req.tokenizer)
    if names or src.kind == "hub":
        hub_state = harness.hub_state_for(tm, names, model_from_hub=src.kind == "hub")
    else:
        hub_state = "local"
    if names:
        tasks = harness.preflight(tm, names, req.num_fewshot, hub_state)

    report: dict = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "date_id": req.date_id or date_id(),
        "cgpt": _cgpt_version(),
        "model": _model_block(src),
        "settings": {
            "tasks": names,
            "requested": list(req.tasks),
            "include_path": req.include_path,
            "num_fewshot": req.num_fewshot,
            "limit": req.limit,
            "batch_size": req.batch_size,
            "device": device,
            "dtype": req.dtype,
            "bootstrap_iters": req.bootstrap_iters,
            "seeds": {**harness.DEFAULT_SEEDS, "fewshot_random_seed": req.fewshot_seed},
            "fewshot_seed": req.fewshot_seed,
        },
        "hub": hub_state,
    }
    if src.kind == "cgpt" and req.dtype:
        assert src.model is not None  # open_source loads every cgpt SRC
        src.model.to(DTYPES[req.dtype])
    lm = None
    with tempfile.TemporaryDirectory(prefix="cgpt-eval-") as tmp:
        if names:
            lm = _run_tasks(req, src, names, tm, device, hub_state, Path(tmp), report, log)
        del tasks
        if data is not None:
            report["heldout"] = _run_heldout(req, src, data, nbytes, device, lm, hub_state, log)
        del lm  # before the folder it was loaded from goes
    report["wall_s"] = round(time.perf_counter() - t0, 3)
    if req.out:
        Path(req.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(req.out), report)
    return report


def date_id() -> str:
    """lm-eval's timestamp for result and sample file names (EvaluationTracker.date_id)."""
    from datetime import datetime

    return datetime.now().isoformat().replace(":", "-")


def _cgpt_version() -> dict:
    return {"version": version(), "git_revision": git_revision()}


def _model_block(src: EvalSource) -> dict:
    block: dict[str, Any] = {
        "source": src.spec,
        "kind": src.kind,
        "what": src.what,
        "path": str(src.path) if src.path else None,
        "shape": src.shape,
        "tokenizer": str(src.tokenizer) if src.tokenizer else None,
        "source_sha256": src.source_sha256,
        "weights_sha256": None,
    }
    if src.kind == "hf":
        assert src.path is not None  # open_source resolves an HF folder SRC to its path
        block["weights_sha256"] = weights_sha256(src.path)
    if src.model is not None:
        p = next(src.model.parameters())
        block.update(
            params=src.model.num_params(), stored_dtype=str(p.dtype).removeprefix("torch.")
        )
    return block


def _run_tasks(req, src: EvalSource, names, tm, device, hub_state, tmp: Path, report, log):
    if src.kind == "cgpt":
        assert src.model is not None  # open_source loads every cgpt SRC
        t = time.perf_counter()
        folder: Path | None = export_hf(
            src.model, tmp / "hf", tokenizer_dir=src.tokenizer, verify=True
        )
        log(
            f"cgpt eval: exported {src.what} to a temporary Hugging Face folder, verified "
            f"against the model's logits ({time.perf_counter() - t:.1f}s)"
        )
        pretrained, tokenizer = str(folder), None
    elif src.kind == "hf":
        folder, pretrained = src.path, str(src.path)
        tokenizer = str(src.tokenizer) if src.tokenizer and src.tokenizer != src.path else None
    else:
        assert src.hub_name is not None  # open_source names every hf:NAME SRC
        folder, pretrained = None, src.hub_name
        tokenizer = str(src.tokenizer) if src.tokenizer else None
    lm = harness.make_lm(
        pretrained, tokenizer, device, req.batch_size, req.dtype, hub_state, hub_name=src.hub_name
    )
    if folder is None:
        # the sha256 is informational: lm-eval has loaded the model, so it is in the cache
        folder = hub.cached_hub_folder(src.hub_name) if src.hub_name else None
        report["model"]["revision"] = getattr(
            getattr(lm.model, "config", None), "_commit_hash", None
        )
        if src.shape is None:
            src.shape = _hf_shape(getattr(lm.model, "config", None))
            report["model"]["shape"] = src.shape
    report["model"]["weights_sha256"] = weights_sha256(Path(folder)) if folder else None
    report["model"]["evaluated_dtype"] = str(getattr(lm.model, "dtype", "")).removeprefix("torch.")
    t = time.perf_counter()
    log(
        f"cgpt eval: lm-eval {harness.lm_eval_version()} on {', '.join(names)} "
        f"({device}, batch {req.batch_size})"
    )
    results = harness.evaluate(
        lm,
        names,
        tm,
        num_fewshot=req.num_fewshot,
        limit=req.limit,
        bootstrap_iters=req.bootstrap_iters,
        fewshot_seed=req.fewshot_seed,
        verbose=req.verbose,
        log_samples=req.log_samples,
    )
    samples = results.pop("samples", None)
    if req.log_samples and samples is not None:
        report["samples"] = write_samples(Path(req.out).parent, samples, report["date_id"])
    report["lm_eval"] = {
        "version": harness.lm_eval_version(),
        "seconds": round(time.perf_counter() - t, 3),
    }
    summary = harness.summarize(results)
    prov = harness.provenance(results)
    report["tasks"] = {}
    for task, entry in summary.items():
        block = {**entry, **prov.get(task, {})}
        if task in PAPER_METRIC:
            block["paper_metric"] = PAPER_METRIC[task]
        report["tasks"][task] = block
    sc = harness.scores(summary)
    if all(t in sc for t in SUITE_TASKS):
        report["suite"] = {
            "name": SUITE,
            "tasks": list(SUITE_TASKS),
            "average": suite_average(sc),
            "average_metric": "acc (the paper's)",
            "average_acc_norm": suite_average(sc, "acc_norm"),
            "average_acc_norm_metric": "acc_norm where the task has it, else acc",
        }
    report["paper"] = _paper_block(req, src, sc, results)
    report.update(harness.jsonable({k: results[k] for k in LM_EVAL_BLOCKS if k in results}))
    return lm


def write_samples(folder: Path, samples: dict, date_id: str) -> dict[str, str]:
    """lm-eval's per-sample records, written by lm-eval's own EvaluationTracker (the same
    sanitizing and file names as ``lm_eval --log_samples``): ``samples_TASK_DATE.jsonl`` in
    ``folder``. Returns {task: file name}."""
    from lm_eval.loggers import EvaluationTracker

    folder.mkdir(parents=True, exist_ok=True)
    # a .json output path puts the samples in its folder (EvaluationTracker's rule)
    tracker = EvaluationTracker(output_path=str(folder / "results.json"))
    tracker.date_id = date_id
    written = {}
    for task, rows in samples.items():
        with harness.quiet_libraries():
            tracker.save_results_samples(task_name=task, samples=rows)
        path = folder / f"samples_{task}_{date_id}.jsonl"
        if not path.is_file():  # the tracker logs a warning and carries on; we do not
            raise CgptError(f"could not write the samples of {task} to {path}")
        written[task] = path.name
    return written


def _hf_shape(cfg) -> dict | None:
    if cfg is None or getattr(cfg, "model_type", None) != "gpt2":
        return None
    return {
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
    }


def _paper_block(req, src: EvalSource, sc: dict, results: dict) -> dict | None:
    if not any(t in sc for t in SUITE_TASKS):
        return None
    size: str | None
    how: str | None
    if req.compare_paper:
        size, how, note = paper_size(req.compare_paper), "--compare-paper", None
    else:
        size, note = match_published(src.shape)
        how = "shape" if size else None
    if size is None:
        return {
            "size": None,
            "note": note
            or "the model's shape (n_layer, n_embd, n_head, "
            "vocab) is none of the published sizes; pass --compare-paper SIZE to compare "
            "anyway",
        }
    shots = sorted({v for t, v in (results.get("n-shot") or {}).items() if t in SUITE_TASKS})
    rows = compare(sc, size)
    return {
        "size": size,
        "matched_by": how,
        "source": PAPER_SOURCE,
        "paper_shots": 0,
        "our_shots": shots,
        "metric": "acc",
        "limit": req.limit,
        "rows": [
            {"task": r.task, "label": r.label, "ours": r.ours, "paper": r.paper, "diff": r.diff}
            for r in rows
        ],
    }


def _run_heldout(req, src: EvalSource, data, nbytes, device, lm, hub_state, log) -> dict:
    if src.kind == "cgpt":
        assert src.model is not None  # open_source loads every cgpt SRC
        model = src.model.to(device)
    elif lm is not None:
        model = lm.model
    else:
        model = _load_hf_model(src, device, req.dtype, hub_state)
    t = time.perf_counter()
    res = heldout_loss(
        model,
        data,
        req.split,
        req.seq_len,
        batch=req.batch_size if isinstance(req.batch_size, int) else 4,
        device=device,
        tokenizer_dir=req.tokenizer,
        text_bytes=nbytes,
    )
    res["data"] = str(data.dir)
    res["seconds"] = round(time.perf_counter() - t, 3)
    log(
        f"cgpt eval: held-out loss over {res['tokens']:,} {req.split} tokens "
        f"({res['seconds']:.1f}s)"
    )
    return res


def _load_hf_model(src: EvalSource, device, dtype, hub_state):
    import transformers
    from transformers import AutoModelForCausalLM

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kw = {key: DTYPES[dtype] if dtype else "auto"}
    target = str(src.path) if src.kind == "hf" else src.hub_name
    assert target is not None  # open_source names every hf:NAME SRC
    try:
        with harness.quiet_libraries():
            model = AutoModelForCausalLM.from_pretrained(target, **kw)
    except Exception as e:
        if src.kind == "hub":
            raise hub.explain_model(target, e, hub_state) from None
        raise CgptError(
            f"transformers cannot load {target}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else e}"
        ) from None
    return model.to(device).eval()


def write_json_atomic(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")  # umask's mode


# ---- the printed report -------------------------------------------------------------------
def _num(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def format_report(report: dict) -> str:
    m = report["model"]
    lines = []
    shape = m.get("shape") or {}
    desc = (
        f"{shape['n_layer']} layers x {shape['n_embd']}, vocab {shape['vocab_size']}"
        if shape
        else m["kind"]
    )
    sha = (m.get("weights_sha256") or "")[:16]
    lines.append(f"model: {m['what']} ({desc}{', weights sha256 ' + sha if sha else ''})")
    if report.get("hub") == "unreachable":
        lines.append(
            "note: the Hugging Face Hub did not answer; ran offline (cached datasets "
            "and models only)"
        )
    if report.get("tasks"):
        le = report["lm_eval"]
        st = report["settings"]
        lines.append(
            f"lm-eval {le['version']}, {st['device']}, batch {st['batch_size']}, "
            f"few-shot seed {st['fewshot_seed']}"
            + (f", limit {st['limit']}" if st.get("limit") else "")
            + f" ({le['seconds']:.1f}s)"
        )
        lines.append("")
        lines.append(f"{'task':<22} {'shots':>5}  {'metric':<18} {'value':>10} {'stderr':>9}")
        for task, t in report["tasks"].items():
            first = True
            metrics = sorted(t["metrics"], key=lambda k: (k != t.get("paper_metric"), k))
            for metric in metrics:
                mark = " *" if metric == t.get("paper_metric") else ""
                shots = t.get("n_shot")
                lines.append(
                    f"{task if first else '':<22} "
                    f"{(str(shots) if first and shots is not None else ''):>5}  "
                    f"{metric + mark:<18} {_num(t['metrics'][metric]):>10} "
                    f"{_num(t['stderr'].get(metric)):>9}"
                )
                first = False
        if any(t.get("paper_metric") for t in report["tasks"].values()):
            lines.append("(* the metric the Cerebras-GPT paper reports)")
    suite = report.get("suite")
    if suite:
        lines.append(
            f"{SUITE} 7-task average: {_num(suite['average'])} acc (the paper's); "
            f"{_num(suite['average_acc_norm'])} with acc_norm where the task has it"
        )
    paper = report.get("paper")
    if paper:
        lines.append("")
        if paper.get("size") is None:
            lines.append(f"paper: {paper['note']}")
        else:
            shots = paper.get("our_shots") or []
            warn = (
                ""
                if shots in ([0], [])
                else f"; ours are {'/'.join(map(str, shots))}-shot, the paper's row 0-shot"
            )
            if paper.get("limit"):
                warn += f"; ours on --limit {paper['limit']} examples per task"
            lines.append(
                f"vs Cerebras-GPT {paper['size']}, the paper's 0-shot acc "
                f"({paper['source']}; matched by {paper['matched_by']}{warn}):"
            )
            lines.append(f"{'task':<12} {'ours':>8} {'paper':>8} {'diff':>8}")
            for r in paper["rows"]:
                diff = "-" if r["diff"] is None else f"{r['diff']:+.4f}"
                lines.append(f"{r['label']:<12} {_num(r['ours']):>8} {r['paper']:>8.3f} {diff:>8}")
    h = report.get("heldout")
    if h:
        lines.append("")
        how = "from meta.json" if h["bytes_from"] == "meta.json" else h["bytes_from"]
        lines.append(
            f"held-out {h['split']} split of {h['data']}: {h['nats_per_token']:.4f} "
            f"nats/token, {h['bits_per_byte']:.4f} bits/byte ({h['tokens']:,} tokens, "
            f"{h['bytes']:,} bytes {how}, windows of {h['seq_len']})"
        )
    return "\n".join(lines)


__all__ = [
    "DTYPES",
    "LM_EVAL_BLOCKS",
    "date_id",
    "write_samples",
    "EvalRequest",
    "default_device",
    "format_report",
    "run_eval",
    "write_json_atomic",
]
