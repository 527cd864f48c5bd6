"""Wall time of quick `cgpt` commands, this tree against an older checkout, side by side.

    git worktree add /tmp/old-cgpt cc73e43
    python scripts/bench_startup.py --old /tmp/old-cgpt [--repeat 5]

Each command runs as a fresh ``python -m cgpt.launch ARGS`` process, old and new alternating
(so a machine's load falls on both alike); the table gives the median seconds and old/new.
The old checkout is imported through a temporary folder whose ``cgpt/`` links to its
model/, train/, launch/ and configs/ (the layout pyproject.toml's package-dir maps), put
first on PYTHONPATH, ahead of the editable install of this tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--version"],
    ["plan", "111M"],
    ["plan", "111M", "--gpu", "h100", "--gpus", "8"],
    ["--help"],
]


def site_for(tree: Path, into: Path) -> Path:
    """A folder to put on PYTHONPATH so that ``import cgpt`` reads ``tree``."""
    pkg = into / "cgpt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for part in ("model", "train", "launch", "configs"):
        (pkg / part).symlink_to(tree / part, target_is_directory=True)
    return into


def timed(args: list[str], pythonpath: str | None, cwd: str) -> float:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cgpt.launch", *args],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="checkout of the older cgpt")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command and tree")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_site = str(site_for(a.old.resolve(), Path(tmp) / "old"))
        print(f"{'command':28} {'old s':>7} {'new s':>7} {'old/new':>8}")
        for args in COMMANDS:
            old, new = [], []
            for _ in range(a.repeat):
                old.append(timed(args, old_site, tmp))
                new.append(timed(args, None, tmp))
            o, n = statistics.median(old), statistics.median(new)
            print(f"{'cgpt ' + ' '.join(args):28} {o:7.2f} {n:7.2f} {o / n:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
