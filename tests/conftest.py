"""Test-wide settings: never touch the network, keep caches in temp folders."""

import atexit
import os
import shutil
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="cgpt-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # one per session, not left behind
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": os.path.join(_CACHE, "hf"),
    "HF_DATASETS_CACHE": os.path.join(_CACHE, "datasets"),
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value
os.environ.pop("WANDB_API_KEY", None)
_OWN_THREADS = "OMP_NUM_THREADS" in os.environ  # the user's setting wins
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    # pytest-xdist's workers (-n N) inherit this environment when they start, after this
    # hook, and import torch (which reads OMP_NUM_THREADS) after that: they share the cores,
    # so one thread each instead of two avoids oversubscribing them
    if not _OWN_THREADS and config.getoption("numprocesses", None):
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
