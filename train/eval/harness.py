"""lm-evaluation-harness, through its Python API, on a model's Hugging Face folder.

Scores are lm-eval's own: :func:`evaluate` builds ``lm_eval.models.huggingface.HFLM(
pretrained=FOLDER)`` and calls ``lm_eval.simple_evaluate`` with lm-eval's default seeds, so
they equal ``lm_eval --model hf --model_args pretrained=FOLDER`` with the same tasks,
few-shot count, limit, batch size, device and dtype. What cgpt adds is around it: task names
checked (close names suggested) and their datasets loaded before any model is, the Hub asked
once instead of retried for tens of seconds (:mod:`cgpt.train.source.hub`), few-shot counts a
task cannot take refused, and a record of what ran (:func:`provenance`: lm-eval version, task
versions, sha256 of each task's config).

:func:`run_tasks` is the trainer's hook: a GPT in, ``{"eval/TASK/METRIC": value}`` out.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cgpt.model.errors import CgptError
from cgpt.model.hf import export_hf
from cgpt.train.eval.paper import SUITE, SUITES, expand_tasks, suite_average
from cgpt.train.source import hub

INSTALL_HINT = "pip install -e '.[eval]'"
# lm-eval's defaults (lm_eval.evaluator.simple_evaluate, and its CLI): kept so that scores
# equal `lm_eval --model hf` on the same folder
DEFAULT_SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
DEFAULT_BOOTSTRAP = 100000
_TM_CACHE: dict[tuple[str | None, bool], object] = {}


# ---- lm-eval, present or not --------------------------------------------------------------
def require_lm_eval():
    """The ``lm_eval`` module, or CgptError naming the extra to install."""
    try:
        import lm_eval
        import lm_eval.evaluator  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as e:
        missing = f" ({e.name} is missing)" if getattr(e, "name", None) else ""
        raise CgptError(
            f"cgpt eval needs lm-evaluation-harness with its Hugging Face backend"
            f"{missing}: {INSTALL_HINT}"
        ) from None
    return lm_eval


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lm_eval", "lm-eval"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    import lm_eval

    return str(getattr(lm_eval, "__version__", "unknown"))


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False, progress: bool = True) -> Iterator[None]:
    """lm-eval's logging down to errors (``verbose`` keeps it), datasets' and transformers'
    progress bars off; ``progress=False`` also hides lm-eval's own request bars."""
    if verbose:
        yield
        return
    import io

    loggers = [
        logging.getLogger(n)
        for n in ("lm_eval", "lm-eval", "datasets", "transformers", "huggingface_hub")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    undo = []
    try:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            undo.append(datasets.enable_progress_bars)
    except (ImportError, AttributeError):
        pass
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
    except ImportError:
        pass
    sink = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
    try:
        with sink:
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)
        for f in undo:
            f()


# ---- tasks --------------------------------------------------------------------------------
def _task_manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (str(Path(include_path).resolve()) if include_path else None, defaults)
    if key not in _TM_CACHE:
        kw: dict = {"include_path": key[0]} if key[0] else {}
        if not defaults:
            kw["include_defaults"] = False
        _TM_CACHE[key] = TaskManager(**kw)
    return _TM_CACHE[key]


def _known(tm, name: str) -> bool:
    if name in tm.all_tasks:
        return True
    return any(c in name for c in "*?[") and bool(tm.match_tasks([name]))


def task_manager_for(names: list[str], include_path: str | None = None):
    """lm-eval's TaskManager that knows every name (CgptError listing close names if not).

    With ``--include-path`` only that folder is indexed when it defines every task asked
    for (well under a second); otherwise lm-eval's own ~14k task configs are indexed too
    (several seconds), once per process.
    """
    require_lm_eval()
    if include_path is not None:
        p = Path(include_path)
        if not p.is_dir():
            raise CgptError(f"--include-path {p} is not a folder of lm-eval task YAML files")
        with quiet_libraries():
            tm = _task_manager(include_path, defaults=False)
        if all(_known(tm, n) for n in names):
            return tm
    with quiet_libraries():
        tm = _task_manager(include_path, defaults=True)
    unknown = [n for n in names if not _known(tm, n)]
    if unknown:
        parts = []
        for n in unknown:
            close = difflib.get_close_matches(n, tm.all_tasks + list(SUITES), n=5, cutoff=0.6)
            parts.append(f"{n!r} (close: {', '.join(close)})" if close else f"{n!r}")
        where = f" nor in {include_path}" if include_path else ""
        raise CgptError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(parts)}: "
            f"not an lm-eval task{where}; `lm-eval ls tasks` lists them, "
            "--include-path DIR adds your own YAML"
        )
    return tm


def parse_task_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise CgptError(f"--tasks {text!r} has an empty name; give comma-separated task names")
    return names


def _load_one(tm, name: str) -> dict:
    """{task_name: Task} for one name (a group or tag gives several)."""
    if hasattr(tm, "load"):  # lm-eval >= 0.4.10
        return dict(tm.load([name])["tasks"])
    from lm_eval.tasks import get_task_dict

    out: dict = {}

    def walk(d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            elif v is not None and hasattr(v, "config"):
                out[getattr(v, "task_name", None) or getattr(v.config, "task", str(k))] = v

    walk(get_task_dict([name], tm))
    return out


_DATASET_PATH = re.compile(r"^dataset_path:\s*['\"]?([^'\"#\s]+)", re.M)
_INCLUDE = re.compile(r"^include:\s*['\"]?([^'\"#\s]+)", re.M)


def dataset_of(tm, name: str) -> str | None:
    """The dataset_path of a task's YAML (or the YAML it includes), for error messages;
    None when it cannot be told."""
    try:
        index = getattr(tm, "task_index", None) or {}
        entry = index.get(name)
        path = getattr(entry, "yaml_path", None)
        if path is None and isinstance(entry, dict):
            path = entry.get("yaml_path")
        for _ in range(3):  # the YAML, then what it includes
            if not path or not Path(path).is_file():
                return None
            text = Path(path).read_text()
            m = _DATASET_PATH.search(text)
            if m:
                return m.group(1)
            inc = _INCLUDE.search(text)
            path = Path(path).parent / inc.group(1) if inc else None
    except Exception:  # best effort: only used to name the dataset in a message
        return None
    return None


# datasets' own builders: files on this machine, no Hub
LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas", "webdataset"}


def needs_hub(tm, names: list[str]) -> bool:
    """Whether any task may fetch its dataset from the Hub (unknown counts as yes)."""
    for n in names:
        ds = dataset_of(tm, n)
        if ds is None or not (ds in LOCAL_BUILDERS or Path(ds).expanduser().exists()):
            return True
    return False


_HUB_STATE: dict[str, str] = {}


def hub_state_for(tm, names: list[str], model_from_hub: bool = False) -> str:
    """'offline', 'online', 'unreachable' (see :func:`cgpt.train.source.hub.prepare_hub_access`,
    asked once per process) or 'local' when nothing needs the Hub (no request is made)."""
    if not model_from_hub and not needs_hub(tm, names):
        return "offline" if hub.offline() else "local"
    if _HUB_STATE.get("state") == "unreachable":  # this process went offline after a probe
        return "unreachable"
    if hub.offline():
        return "offline"
    if "state" not in _HUB_STATE:
        _HUB_STATE["state"] = hub.prepare_hub_access()
    return _HUB_STATE["state"]


def preflight(tm, names: list[str], num_fewshot: int | None, hub_state: str) -> dict:
    """Load every task (datasets included) before any model is: one line for a dataset that
    cannot be loaded, a few-shot count a task cannot take. Returns {task_name: Task}."""
    tasks: dict = {}
    for name in names:
        try:
            with quiet_libraries():
                tasks.update(_load_one(tm, name))
        except CgptError:
            raise
        except Exception as e:  # lm-eval, datasets and fsspec raise many types
            raise hub.explain_dataset(name, dataset_of(tm, name), e, hub_state) from None
    if num_fewshot:
        for tname, task in tasks.items():
            check_fewshot(tname, task, num_fewshot)
    return tasks


def check_fewshot(name: str, task, n: int) -> None:
    """Refuse ``n`` few-shot examples where lm-eval would ignore or could not draw them."""
    cfg = task.config
    fixed = getattr(cfg, "num_fewshot", None)
    if fixed == 0:
        raise CgptError(
            f"task {name} fixes num_fewshot: 0 in its YAML (lm-eval would silently "
            f"ignore --num-fewshot {n}); evaluate it 0-shot or copy its YAML with "
            "another num_fewshot into --include-path"
        )
    try:
        pool = task.fewshot_docs()
        size = len(pool) if pool is not None else 0
    except Exception as e:
        raise CgptError(
            f"task {name} cannot give few-shot examples: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from None
    # lm-eval's sampler draws n+1 documents, to leave out the one being evaluated
    if size < n + 1:
        raise CgptError(
            f"task {name} has {size} document{'s' if size != 1 else ''} to draw "
            f"few-shot examples from; --num-fewshot {n} needs {n + 1} (lm-eval "
            "draws one extra to leave out the evaluated document)"
        )


# ---- running ------------------------------------------------------------------------------
def make_lm(
    pretrained: str,
    tokenizer: str | None = None,
    device: str = "cpu",
    batch_size: int | str = 16,
    dtype: str | None = None,
    hub_state: str = "online",
    hub_name: str | None = None,
):
    """lm-eval's HFLM on a folder (or Hub id), as ``--model hf`` builds it."""
    require_lm_eval()
    kw: dict = {"pretrained": pretrained, "device": device, "batch_size": batch_size}
    if dtype:
        kw["dtype"] = dtype
    if tokenizer:
        kw["tokenizer"] = tokenizer
    try:
        with quiet_libraries():
            return _checked_hflm()(**kw)
    except Exception as e:
        if hub_name is not None:
            raise hub.explain_model(hub_name, e, hub_state) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CgptError(f"lm-eval could not load {pretrained}: {first}") from None


@functools.cache
def _checked_hflm():
    """lm-eval's HFLM, plus one check: a continuation longer than the model's context is a
    CgptError naming the task and both lengths (HFLM itself stops on a bare assert)."""
    from lm_eval.models.huggingface import HFLM

    class ContextCheckedHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self._cgpt_task_names = [getattr(r, "task_name", None) for r in requests]
            try:
                return super().loglikelihood(requests, disable_tqdm)
            finally:
                self._cgpt_task_names = []

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            check_continuations(requests, self.max_length, self._cgpt_task_names)
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

    return ContextCheckedHFLM


def check_continuations(requests, max_length: int, task_names: list | None = None) -> None:
    """``requests`` are HFLM's ((context, continuation), context_ids, continuation_ids)."""
    names = task_names if task_names and len(task_names) == len(requests) else None
    for i, (_, _, cont) in enumerate(requests):
        if len(cont) > max_length:
            task = names[i] if names else "(unknown task)"
            raise CgptError(
                f"task {task}: a continuation is {len(cont)} tokens long but the model's "
                f"context is {max_length} tokens; lm-eval cannot score it (leave the task "
                "out or use a model with a longer context)"
            )


@contextlib.contextmanager
def _without_environment_report() -> Iterator[None]:
    """Skip the environment report simple_evaluate appends to its results (``pip list`` and
    ``git describe`` subprocesses, ~0.8 s a call here; no score depends on them)."""
    import lm_eval.evaluator as ev

    saved = {n: getattr(ev, n) for n in ("add_env_info", "get_git_commit_hash") if hasattr(ev, n)}
    if "add_env_info" in saved:
        ev.add_env_info = lambda results: None
    if "get_git_commit_hash" in saved:
        ev.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(ev, n, f)


def evaluate(
    lm,
    names: list[str],
    tm,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP,
    fewshot_seed: int = DEFAULT_SEEDS["fewshot_random_seed"],
    verbose: bool = False,
    progress: bool = True,
    environment_report: bool = True,
    log_samples: bool = False,
) -> dict:
    """``lm_eval.simple_evaluate`` on ``lm`` (lm-eval's default seeds; ``fewshot_seed``
    picks the few-shot examples); returns lm-eval's results dict. ``environment_report=
    False`` (the trainer's hook) leaves out lm-eval's environment and git report;
    ``log_samples`` keeps lm-eval's per-sample records (``results["samples"]``)."""
    lm_eval = require_lm_eval()
    seeds = {**DEFAULT_SEEDS, "fewshot_random_seed": fewshot_seed}
    lean = contextlib.nullcontext() if environment_report else _without_environment_report()
    # lm-eval prints some notes with print(): onto stderr, so stdout holds only cgpt's report
    with quiet_libraries(verbose, progress), contextlib.redirect_stdout(sys.stderr), lean:
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names),
            task_manager=tm,
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            **seeds,
        )
    if res is None:  # not rank 0 of a distributed lm-eval run
        raise CgptError("lm-eval returned no results (not rank 0)")
    return res


# ---- results ------------------------------------------------------------------------------
_SKIP = {"alias", "name", "sample_len", "samples", " "}


def summarize(results: dict) -> dict[str, dict]:
    """{task: {"metrics": {metric: value}, "stderr": {metric: value}}} from lm-eval's
    results (tasks and groups). A metric under a filter other than "none" is named
    ``metric,filter``; values are lm-eval's, unrounded."""
    out: dict[str, dict] = {}
    for section in ("results", "groups"):
        for task, res in (results.get(section) or {}).items():
            entry = out.setdefault(task, {"metrics": {}, "stderr": {}})
            for key, v in res.items():
                if key in _SKIP or "," not in key:
                    continue
                metric, filt = key.split(",", 1)
                kind = "metrics"
                if metric.endswith("_stderr"):
                    metric, kind = metric[: -len("_stderr")], "stderr"
                name = metric if filt == "none" else f"{metric},{filt}"
                entry[kind][name] = v if _is_number(v) else None
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scores(summary: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} with numbers only."""
    return {t: {m: v for m, v in e["metrics"].items() if _is_number(v)} for t, e in summary.items()}


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable(obj):
    """JSON-able, with no memory addresses (a function lm-eval could not print as source)."""
    if isinstance(obj, dict):
        return {str(k): _stable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if callable(obj):
        try:
            import inspect

            return inspect.getsource(obj)
        except (TypeError, OSError):
            pass
    return _ADDRESS.sub("", str(obj))


def config_sha256(config: dict) -> str:
    """sha256 of a task's config as lm-eval reports it (``results["configs"][task]``:
    prompt templates, splits, metrics, the source of its Python functions), canonical JSON;
    ``metadata`` is left out except its ``version`` (it also holds the YAML's path on this
    machine and model arguments)."""
    body = {k: v for k, v in config.items() if k != "metadata"}
    meta = config.get("metadata")
    if isinstance(meta, dict) and "version" in meta:
        body["metadata"] = {"version": meta["version"]}
    text = json.dumps(_stable(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def provenance(results: dict) -> dict:
    """Per task: lm-eval's task version, few-shot count, sample counts, config sha256."""
    configs = results.get("configs") or {}
    out = {}
    for task in sorted(set(results.get("results") or {}) | set(configs)):
        out[task] = {
            "version": (results.get("versions") or {}).get(task),
            "n_shot": (results.get("n-shot") or {}).get(task),
            "n_samples": (results.get("n-samples") or {}).get(task),
            "config_sha256": config_sha256(configs[task]) if task in configs else None,
            "higher_is_better": (results.get("higher_is_better") or {}).get(task),
        }
    return out


def jsonable(obj):
    """lm-eval's results (configs hold functions, numpy numbers) as plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return _stable(obj)


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """``{"eval/TASK/METRIC": value}`` (numbers only, no stderr), plus
    ``eval/cerebras-gpt/avg`` when the paper's seven tasks are all there."""

    sc = scores(summarize(results))
    flat = {f"{prefix}/{t}/{m}": float(v) for t, ms in sc.items() for m, v in ms.items()}
    avg = suite_average(sc)
    if avg is not None:
        flat[f"{prefix}/{SUITE}/avg"] = avg
    return flat


# ---- the trainer's hook -------------------------------------------------------------------
@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """simple_evaluate seeds python, numpy and torch: give the trainer its streams back."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run_tasks(
    model,
    tokenizer_dir,
    tasks: list[str],
    limit: int | None = None,
    include_path: str | None = None,
    device=None,
    *,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    verify: bool = False,
) -> dict[str, float]:
    """Evaluate a GPT on lm-eval tasks, for the trainer (rank 0, every ``eval_every`` steps).

    The model is exported to a temporary Hugging Face folder (``verify``: compare its logits
    with transformers', off by default here since the run's final export is verified),
    evaluated by lm-eval's HFLM on ``device`` (default: the model's), and the folder removed.
    Returns ``{"eval/TASK/METRIC": value}``. The model's weights, dtype, device and
    train/eval mode, and the python/numpy/torch random streams, are as before the call.
    Raises CgptError (lm-eval missing, unknown task, dataset unreachable).
    """

    names = expand_tasks(list(tasks))
    tm = task_manager_for(names, include_path)
    state = hub_state_for(tm, names)
    if device is None:
        device = str(next(model.parameters()).device)
    with _rng_preserved(), tempfile.TemporaryDirectory(prefix="cgpt-eval-") as tmp:
        folder = export_hf(model, Path(tmp) / "hf", tokenizer_dir=tokenizer_dir, verify=verify)
        lm = make_lm(str(folder), device=str(device), batch_size=batch_size)
        try:
            results = evaluate(
                lm,
                names,
                tm,
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=0,
                progress=False,
                environment_report=False,
            )
        except Exception as e:
            if hub.is_hub_error(e):
                raise hub.explain_dataset(", ".join(names), None, e, state) from None
            raise
        finally:
            del lm
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return flat_metrics(results)


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_SEEDS",
    "INSTALL_HINT",
    "check_fewshot",
    "config_sha256",
    "dataset_of",
    "evaluate",
    "flat_metrics",
    "hub_state_for",
    "jsonable",
    "lm_eval_version",
    "make_lm",
    "needs_hub",
    "parse_task_list",
    "preflight",
    "provenance",
    "require_lm_eval",
    "run_tasks",
    "scores",
    "summarize",
    "task_manager_for",
]
