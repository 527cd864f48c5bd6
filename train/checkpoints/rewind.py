"""A resume's writes to the run folder (rewind moves, changes.jsonl, config.yaml, data.json,
the metrics cut) as one transaction a kill cannot leave half done: an fsynced intent file,
``config.yaml`` as the commit point, and at the next start the intent finished or undone.
Why, and the recovery rules: docs/DESIGN-NOTES.md, checkpoints/rewind.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import identity
from cgpt.train.checkpoints.checkpoint import fsync_folder
from cgpt.train.checkpoints.resume import CHANGES_FILE, DATA, ResumePoint
from cgpt.train.config import RUN_CONFIG, write_text_atomic
from cgpt.train.distributed import all_sum
from cgpt.train.metrics import read_metrics, truncate_metrics

INTENT = "rewind.intent.json"
# tests only: SIGKILL this process right after the named step of a rewind (intent, moved,
# recorded, config, metrics), the way a node failure or `scancel` would stop it there
FAULT_ENV = "CGPT_TEST_KILL_REWIND_AFTER"


def _fault(where: str) -> None:
    if os.environ.get(FAULT_ENV) == where:
        os.kill(os.getpid(), signal.SIGKILL)


def apply_start(run_dir: Path, point: ResumePoint, cfg) -> list[str]:
    """Rank 0, after every check and the checkpoint load: write ``cfg`` as the run's
    config.yaml, and for a rewind or an allowed change do it all as one transaction
    (module docstring). Returns the messages to log."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)  # as RunConfig.save writes it
    step = int(point.state.get("step", 0))
    if not (point.abandon or point.changes):  # each write alone is safe to redo
        write_text_atomic(run_dir / RUN_CONFIG, text)
        _write_data(run_dir, point.data)
        truncate_metrics(run_dir / "metrics.jsonl", step)  # steps after it are redone
        return []
    intent_id = uuid.uuid4().hex
    intent = {
        "id": intent_id,
        "checkpoint": point.folder.name if point.folder else None,
        "step": step,
        "abandon": [p.name for p in point.abandon],
        "dest": f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}",
        "row": {
            "time": time.time(),
            "step": step,
            "checkpoint": str(point.folder) if point.folder else None,
            "changes": point.changes,
            "intent": intent_id,
        },
        "config": text,
        "data": point.data,
    }
    write_text_atomic(run_dir / INTENT, json.dumps(intent, indent=1) + "\n")
    _fault("intent")
    return _forward(run_dir, intent)


def _forward(run_dir: Path, intent: dict) -> list[str]:
    """Apply (or finish) an intent; every step may run again after a kill."""
    ckpts, msgs = run_dir / "checkpoints", []
    dest = ckpts / intent["dest"]
    if intent["abandon"]:
        dest.mkdir(parents=True, exist_ok=True)
        for name in intent["abandon"]:
            if (ckpts / name).exists() and not (dest / name).exists():
                os.replace(ckpts / name, dest / name)
        _fsync_dirs(ckpts, dest)
        msgs.append(
            f"rewound to {intent['checkpoint']}: moved {', '.join(intent['abandon'])} to {dest}"
        )
    _fault("moved")
    if intent["row"]["changes"]:
        if not _recorded(run_dir, intent["id"]):
            with open(run_dir / CHANGES_FILE, "a+") as f:
                f.seek(0)
                text = f.read()
                cut = bool(text) and not text.endswith("\n")  # a row a kill cut short
                f.write(("\n" if cut else "") + json.dumps(intent["row"]) + "\n")
                f.flush()
                os.fsync(f.fileno())
        msgs.append(
            "config changed on resume: "
            + ", ".join(
                f"{k} {a!r} -> {b!r}" if k != DATA else "data: other sha256 checksums"
                for k, (a, b) in intent["row"]["changes"].items()
            )
        )
    _fault("recorded")
    write_text_atomic(run_dir / RUN_CONFIG, intent["config"])  # the commit point
    _fault("config")
    _write_data(run_dir, intent["data"])
    truncate_metrics(run_dir / "metrics.jsonl", int(intent["step"]))
    _fault("metrics")
    (run_dir / INTENT).unlink()
    _fsync_dirs(run_dir)
    return msgs


def recover(run_dir: Path) -> list[str]:
    """Rank 0 at the start of a resume: finish or undo a rewind a kill interrupted (module
    docstring); returns what was done, for the log."""
    path = run_dir / INTENT
    if not path.is_file():
        return []
    try:
        intent = json.loads(path.read_text())
        committed = (run_dir / RUN_CONFIG).read_text() == intent["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CgptError(
            f"{path} (an interrupted rewind's record) is unreadable ({e.__class__.__name__}); "
            "compare config.yaml, changes.jsonl and checkpoints/abandoned-* by hand, then "
            "delete it"
        ) from None
    what = f"the rewind to {intent['checkpoint']} (step {intent['step']})"
    try:
        if committed:
            msgs = _forward(run_dir, intent)
            return [f"finished {what} that a kill interrupted", *msgs]
        _back(run_dir, intent)
    except OSError as e:
        raise CgptError(
            f"could not recover {what} that a kill interrupted: {e.strerror or e} "
            f"({e.filename}); nothing else was changed"
        ) from None
    return [
        f"undid {what} that a kill interrupted before it took effect (its config was never "
        "written); the run is as it was before it: run that command again to rewind"
    ]


def _back(run_dir: Path, intent: dict) -> None:
    ckpts = run_dir / "checkpoints"
    dest = ckpts / intent["dest"]
    for name in intent["abandon"]:
        if (dest / name).exists() and not (ckpts / name).exists():
            os.replace(dest / name, ckpts / name)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    _fsync_dirs(ckpts)
    changes = run_dir / CHANGES_FILE
    if _recorded(run_dir, intent["id"]):
        keep = [r for r in read_metrics(changes) if r.get("intent") != intent["id"]]
        write_text_atomic(changes, "".join(json.dumps(r) + "\n" for r in keep))
    (run_dir / INTENT).unlink()
    _fsync_dirs(run_dir)


def _recorded(run_dir: Path, intent_id: str) -> bool:
    return any(r.get("intent") == intent_id for r in read_metrics(run_dir / CHANGES_FILE))


def _write_data(run_dir: Path, data: dict) -> None:
    path = run_dir / identity.DATA_FILE
    if data and identity.read_identity(path) != data:
        identity.write_identity(path, data)


def _fsync_dirs(*folders: Path) -> None:
    """fsync each folder that exists (a rewind's moves and its intent file are then on disk)."""
    for d in folders:
        if d.is_dir():
            fsync_folder(d)


def recover_interrupted(run_dir: Path, dist) -> list[str]:
    """:func:`recover` on rank 0 while the others wait; every rank gets its error."""
    error, notes = None, []
    if dist.is_main:
        try:
            notes = recover(run_dir)
        except CgptError as e:
            error = e
    if all_sum([float(error is not None)], dist.device)[0]:
        raise error or CgptError("rank 0 could not recover an interrupted rewind")
    return notes
