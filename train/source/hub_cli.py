"""The download command our offline advice names, as the installed huggingface_hub spells it.

huggingface_hub 0.34 introduced the ``hf`` command (``hf download REPO --local-dir DIR``) and
1.0 removed the old ``huggingface-cli``; advice printed by cgpt must work when followed
literally, so it names the console script the installed release really ships.
"""

from __future__ import annotations

import importlib.metadata

# newest first: the first one the installed huggingface_hub ships is the one we name
_CLIS = ("hf", "huggingface-cli")


def hub_cli() -> str:
    """The installed huggingface_hub's command-line program (``hf`` when it is not installed:
    `pip install huggingface_hub` gives that one today)."""
    try:
        dist = importlib.metadata.distribution("huggingface_hub")
    except importlib.metadata.PackageNotFoundError:
        return _CLIS[0]
    scripts = {e.name for e in dist.entry_points if e.group == "console_scripts"}
    return next((c for c in _CLIS if c in scripts), _CLIS[0])


def download_command(repo: str, local_dir: str = "DIR") -> str:
    """``hf download REPO --local-dir DIR`` (or the older spelling where that is installed)."""
    return f"{hub_cli()} download {repo} --local-dir {local_dir}"
