"""The Hugging Face Hub, only when it answers: ``hf:NAME`` model snapshots, offline mode, a
quick reachability probe, and one-line explanations of datasets/transformers download failures.

Left alone, ``datasets`` retries an unreachable Hub for tens of seconds before it fails (23 s
measured here, no network, lm-eval's hellaswag). :func:`prepare_hub_access` asks the Hub
endpoint once, with a short timeout, and when it does not answer switches this process to
offline mode: files already in the local cache still load, anything else fails at once and
:func:`explain` turns the failure into one line that says how to run offline.

huggingface_hub, datasets and transformers are imported inside the functions that use them:
they are optional and slow to import.
"""

from __future__ import annotations

import os
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.train.checks import HF_PREFIX
from cgpt.train.source.hub_cli import download_command

# a snapshot's small files: the config and any tokenizer; the weights are asked for apart
HUB_META = ["*.json", "merges.txt", "vocab.json", "*.model"]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT_S = 3.0
OFFLINE_HOW = (
    "to run offline, use a local task YAML (dataset_path: json with "
    "dataset_kwargs: {data_files: ...}) and --include-path DIR, or download the "
    "dataset once where the Hub is reachable and then set HF_DATASETS_OFFLINE=1 to "
    "read it from the local cache"
)


def offline() -> bool:
    """Whether this process already runs in Hugging Face offline mode."""
    if any(os.environ.get(v, "").upper() in _TRUE for v in OFFLINE_VARS):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def endpoint() -> str:
    try:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint answers an HTTP request within ``timeout`` seconds (through
    huggingface_hub's own session, so proxies and certificates are the ones downloads use)."""
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint(), timeout=timeout)
        return True
    except Exception:  # any failure to get an answer: DNS, refused, timeout, TLS
        return False


def go_offline() -> None:
    """Switch this process to offline mode (the env vars, and the flags that datasets,
    huggingface_hub and transformers read at import time)."""
    for v in OFFLINE_VARS:
        os.environ[v] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        import datasets.config as dcfg

        dcfg.HF_HUB_OFFLINE = True
        dcfg.HF_DATASETS_OFFLINE = True
    except ImportError:
        pass
    try:  # transformers 4.x caches the flag in a module global
        import transformers.utils.hub as thub

        if hasattr(thub, "_is_offline_mode"):
            thub._is_offline_mode = True
    except ImportError:
        pass


def prepare_hub_access() -> str:
    """'offline' (already), 'online' (the Hub answered) or 'unreachable' (it did not, and
    this process is now offline: cached files still load, others fail at once)."""
    if offline():
        return "offline"
    if reachable():
        return "online"
    go_offline()
    return "unreachable"


def hub_folder(name: str, weights: bool = True) -> Path:
    """The local snapshot of Hub repository ``name`` (downloaded once into the HF cache;
    offline it must be cached). Weights: safetensors if the repo has them, else .bin."""
    try:
        # deferred: huggingface_hub imports requests and more; only hf:NAME sources need it
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CgptError(
            f"{HF_PREFIX}{name} needs huggingface_hub (pip install 'cgpt[hf]')"
        ) from None
    patterns = HUB_META + (["*.safetensors"] if weights else [])
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
        if weights and not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name, allow_patterns=HUB_META + ["pytorch_model*.bin"]))
    except Exception as e:  # offline, unknown repo, gated, network: all one line
        raise CgptError(
            f"init.source {HF_PREFIX}{name}: cannot get it from the Hugging Face Hub "
            f"({type(e).__name__}: {_first_line(e)}); go online once (it is cached after), or "
            f"download it ({download_command(name)}) and use DIR"
        ) from None
    return folder


def cached_hub_folder(name: str) -> Path | None:
    """The snapshot of ``name`` already in the local HF cache, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not installed, not cached: the caller goes on without it
        return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def is_hub_error(e: BaseException) -> bool:
    """Whether ``e`` is a failure to get something from the Hub (offline or unreachable)."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & {
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "DatasetNotFoundError",
        "ConnectTimeout",
        "ConnectError",
        "ConnectionError",
        "HfHubHTTPError",
        "RepositoryNotFoundError",
        "GatedRepoError",
    }:
        return True
    text = str(e)
    return any(
        s in text
        for s in (
            "on the Hub",
            "huggingface.co",
            "offline mode",
            "OfflineModeIsEnabled",
            "cached files",
        )
    )


def explain_dataset(task: str, dataset: str | None, e: BaseException, state: str) -> CgptError:
    """One line for a task that could not be loaded (its dataset, most often)."""
    what = f"the Hugging Face dataset {dataset!r}" if dataset else "its dataset"
    if is_hub_error(e):
        why = {
            "unreachable": f"the Hub ({endpoint()}) did not answer within {PROBE_TIMEOUT_S:g}s",
            "offline": "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)",
        }.get(state, "the Hub could not be reached")
        return CgptError(
            f"task {task} needs {what}, which is not in the local cache, and {why}; {OFFLINE_HOW}"
        )
    where = f" (dataset {dataset})" if dataset else ""
    return CgptError(f"task {task} could not be loaded{where}: {_first_line(e)}")


def explain_model(name: str, e: BaseException, state: str) -> CgptError:
    """One line for an ``hf:NAME`` model that could not be loaded."""
    if state in ("offline", "unreachable") and (is_hub_error(e) or isinstance(e, OSError)):
        why = (
            f"the Hub ({endpoint()}) did not answer within {PROBE_TIMEOUT_S:g}s"
            if state == "unreachable"
            else "offline mode is on (HF_HUB_OFFLINE)"
        )
        return CgptError(
            f"{HF_PREFIX}{name} could not be loaded: not in the local Hugging Face cache, "
            f"and {why}; download it where the Hub is reachable "
            f"(`{download_command(name)}`) and pass DIR as SRC"
        )
    return CgptError(f"{HF_PREFIX}{name} could not be loaded: {_first_line(e)}")


__all__ = [
    "OFFLINE_HOW",
    "endpoint",
    "explain_dataset",
    "explain_model",
    "go_offline",
    "hub_folder",
    "is_hub_error",
    "offline",
    "prepare_hub_access",
    "reachable",
]
