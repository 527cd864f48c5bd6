"""What a published checkpoint folder is, read without torch: its names (``step-N``, the
``complete`` marker, the manifest), the listing of complete ones and the checks that it
reads back whole. Sweeps and quick commands use these on run folders without importing
torch; cgpt.train.checkpoints.checkpoint writes the folders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

COMPLETE = "complete"
STATE = "trainer_state.json"
MANIFEST = "manifest.json"  # every file of the checkpoint and its size, written before COMPLETE
PUBLISHED_TAG = re.compile(r"^step-(\d+)$")


def tag_for(step: int) -> str:
    return f"step-{step}"


def published(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first, as (step, folder)."""
    root = Path(ckpt_dir)
    out: list[tuple[int, Path]] = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = PUBLISHED_TAG.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file() and (p / STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def newest(ckpt_dir: str | Path) -> tuple[int, Path] | None:
    found = published(ckpt_dir)
    return found[-1] if found else None


def problem(folder: Path) -> str | None:
    """Why a published checkpoint cannot be resumed from (None: it reads back whole).

    Every ``.pt`` file torch writes is a zip archive with a CRC per entry: reading each
    entry back (``testzip``) finds a truncated or corrupted file without unpickling it.
    """
    import zipfile

    try:
        json.loads((folder / STATE).read_text())
    except (OSError, ValueError) as e:
        return f"{STATE} unreadable ({e.__class__.__name__})"
    lost = missing_files(folder)
    if lost:
        return lost
    # DeepSpeed's files and ours; not a universal conversion (checked, and redone if
    # broken, when a resume uses it: cgpt.train.checkpoints.universal)
    files = sorted(f for f in folder.rglob("*.pt") if f.relative_to(folder).parts[0] != "universal")
    if not files:
        return "no checkpoint files"
    for f in files:
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            return f"{f.name} is truncated or not a torch file ({e.__class__.__name__})"
        if bad is not None:
            return f"{f.name} is corrupted (entry {bad})"
    return None


def manifest(folder: Path, skip: tuple[str, ...] = (MANIFEST, COMPLETE)) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> bytes), except ``skip``."""
    return {
        str(f.relative_to(folder)): f.stat().st_size
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name not in skip
    }


def missing_files(folder: Path, listed: dict | None = None) -> str | None:
    """Which file the save wrote is gone or has another size now (None: all there).
    ``listed``: relative path -> bytes; default: the checkpoint's manifest (a checkpoint
    saved before manifests existed is checked by its files' CRCs only)."""
    if listed is None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            listed = dict(json.loads(path.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{MANIFEST} unreadable ({e.__class__.__name__})"
    for name, size in sorted(listed.items()):
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != int(size):
            return f"{name} has {f.stat().st_size:,} bytes but {int(size):,} were saved"
    return None


def newest_readable(ckpt_dir: str | Path) -> tuple[tuple[int, Path] | None, list[str]]:
    """The newest checkpoint that reads back whole, and a warning per newer one that does
    not (a save cut short by a full disk or a dying node): resume falls back past them."""
    warnings: list[str] = []
    for step, folder in reversed(published(ckpt_dir)):
        why = problem(folder)
        if why is None:
            return (step, folder), warnings
        warnings.append(f"checkpoint {folder} is unusable ({why}); falling back to an earlier one")
    return None, warnings


# ---------------------------------------------------------------------------- RNG
