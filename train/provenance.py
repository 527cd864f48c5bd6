"""Which cgpt made a file: the installed version and, for a git checkout, the revision.

Recorded in every run folder's ``config.yaml`` (section ``provenance``) and ``summary.json``
so a result can be traced to the code that produced it; ``cgpt --version`` prints the same.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding cgpt


def version() -> str:
    try:
        return metadata.version("cgpt")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the checkout cgpt runs from, with "-dirty" for local changes; None when
    cgpt is not run from a git checkout (a wheel install) or git is missing."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(SOURCE), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != SOURCE:
            return None  # some enclosing repository, not cgpt's own
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def provenance() -> dict:
    return {"version": version(), "git_revision": git_revision()}
