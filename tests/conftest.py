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
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
}.items():
    os.environ[key] = value
os.environ.pop("WANDB_API_KEY", None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
