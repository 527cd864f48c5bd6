"""Crash-safe DeepSpeed checkpoints: every rank saves under ``tmp-step-N``; rank 0 adds our
files and the ``complete`` marker and publishes ``step-N`` by one rename, so a kill never
harms the previous checkpoint. Files are read back through a restricted unpickler. Layout
and the save sequence: docs/DESIGN-NOTES.md, checkpoints/checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints.identity import DATA_FILE

# the folder layout, re-exported: checkpoint.COMPLETE, checkpoint.published, ... as before
from cgpt.train.checkpoints.layout import (  # noqa: F401
    COMPLETE,
    MANIFEST,
    PUBLISHED_TAG,
    STATE,
    manifest,
    missing_files,
    newest,
    newest_readable,
    problem,
    published,
    tag_for,
)
from cgpt.train.config import RunConfig, write_text_atomic
from cgpt.train.distributed import all_sum, barrier


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state(legacy=True)  # the default; numpy's stub types legacy=False
    assert isinstance(np_state, tuple)  # the global generator is MT19937: the legacy tuple
    state = {
        "torch": torch.get_rng_state(),
        "python_version": torch.tensor(py[0]),
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": torch.tensor([] if py[2] is None else [py[2]], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    gauss = s["python_gauss"].tolist()
    random.setstate(
        (int(s["python_version"]), tuple(s["python_state"].tolist()), gauss[0] if gauss else None)
    )
    pos, has_gauss = s["numpy_pos"].tolist()
    np.random.set_state(
        (
            "MT19937",
            s["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(s["numpy_gauss"][0]),
        )
    )
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


# ---------------------------------------------------------------------------- save / load
class Checkpointer:
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last, self.rank = keep_last, rank

    def save(self, engine, step: int, state: dict, cfg: RunConfig) -> Path:
        """Save a checkpoint of `step` (all ranks call this); returns the published folder.

        Refuses (CgptError on every rank, nothing written) when any rank's weights are not
        finite; a failed write (a full disk) removes the partial folder and says which
        checkpoint is still intact. Files and folder are fsynced before the publishing rename.
        """
        bad, total = local_weights_finite(engine.module)
        bad, total = (int(v) for v in all_sum([bad, total], _device_of(engine)))
        if bad:
            raise CgptError(
                f"the weights are not finite at step {step} ({bad} of {total} "
                "tensors); checkpoint not saved"
            )
        tag, tmp_tag = tag_for(step), "tmp-" + tag_for(step)
        tmp, final = self.dir / tmp_tag, self.dir / tag
        failed = 0.0
        try:
            if self.rank == 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)  # left over by an interrupted save
            barrier()
            engine.save_checkpoint(
                str(self.dir), tag=tmp_tag, client_state={"step": step}, save_latest=False
            )
            tmp.mkdir(parents=True, exist_ok=True)  # ranks without DeepSpeed files of their own
            torch.save(rng_state(), tmp / f"rng-rank{self.rank}.pt")
            fsync_tree(tmp)
        except (OSError, RuntimeError) as e:
            if not _is_write_error(e):
                raise
            failed, error = 1.0, e
        if all_sum([failed], _device_of(engine))[0]:  # every rank's files on disk, or none
            message = self._save_failed(step, error if failed else None)  # before freeing
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CgptError(message)
        if self.rank == 0:
            try:
                cfg.save(tmp / "config.yaml")
                write_text_atomic(
                    tmp / STATE, json.dumps(state, indent=1, default=_jsonable) + "\n"
                )
                data = self.dir.parent / DATA_FILE  # what the run trains on: a resume
                if data.is_file():  # checks that this checkpoint was trained on it too
                    write_text_atomic(tmp / DATA_FILE, data.read_text())
                files = {"files": manifest(tmp)}  # checked by problem() before a resume
                write_text_atomic(tmp / MANIFEST, json.dumps(files, indent=1) + "\n")
                write_text_atomic(tmp / COMPLETE, f"{step}\n")
                fsync_folder(tmp)
                if final.exists():  # re-saving a step (e.g. the end of a resumed run)
                    shutil.rmtree(final)
                tmp.rename(final)  # the publish: one atomic rename
                fsync_folder(self.dir)
            except OSError as e:
                failed, error = 1.0, e
                message = self._save_failed(step, e)
                shutil.rmtree(tmp, ignore_errors=True)
            if not failed:
                self._write_latest(tag)
                self._prune(cfg.runtime.save_steps)
        if all_sum([failed], _device_of(engine))[0]:
            raise CgptError(message if failed else self._save_failed(step, None))
        return final

    def _write_latest(self, tag: str) -> None:
        """``checkpoints/latest`` names the newest checkpoint for people and DeepSpeed's tools;
        cgpt resumes from the folders themselves, so a failed write (out of inodes) is a
        warning that says what failed, not a failed save."""
        try:
            write_text_atomic(self.dir / "latest", tag + "\n")
        except OSError as e:
            print(
                f"cgpt train: warning: checkpoint {tag} is saved and complete; only "
                f"{self.dir / 'latest'} could not be updated ({e.strerror or e}), which a "
                "resume does not need",
                file=sys.stderr,
            )

    def _save_failed(self, step: int, error: BaseException | None) -> str:
        last = newest(self.dir)
        why = write_failure(error, self.dir) if error else "another rank could not write its part"
        keep = f"checkpoint {last[1]} is intact" if last else "no earlier checkpoint exists"
        return (
            f"could not save checkpoint step-{step} in {self.dir}: {why}; the partial "
            f"save was removed and {keep}. Free disk space, then resume"
        )

    def _prune(self, save_steps: list[int] | tuple[int, ...] = ()) -> None:
        """Keep the newest ``keep_last`` checkpoints and every one named in
        ``runtime.save_steps`` (kept for later `cgpt branch` runs, never counted against
        keep_last); ``abandoned-*`` folders of a rewind are neither counted nor touched."""
        kept = set(save_steps)
        regular = [(s, p) for s, p in published(self.dir) if s not in kept]
        for _, p in regular[: -self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob("tmp-step-*"):  # interrupted saves older than this one
            shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob("tmp-universal-*"):  # interrupted universal conversions
            shutil.rmtree(p, ignore_errors=True)

    def load(self, engine, folder: Path, load_weights: Callable[[Any], Any] | None = None) -> dict:
        """Restore engine (weights + optimizer), this rank's RNG; return trainer state.
        ``load_weights(engine)``: loads another way than ``engine.load_checkpoint(folder)``
        and returns DeepSpeed's load path (the trainer passes cgpt.train.checkpoints.universal.load
        for a resume on another world size or ZeRO stage)."""
        state = read_state(folder)
        restricted_loads(engine)
        if load_weights is not None:
            path = load_weights(engine)
        else:
            path, _ = engine.load_checkpoint(
                str(folder.parent), tag=folder.name, load_lr_scheduler_states=False
            )
        if path is None:
            raise CgptError(
                f"DeepSpeed could not load checkpoint {folder}; delete it to "
                "resume from the previous one"
            )
        rng = folder / f"rng-rank{self.rank}.pt"
        if rng.is_file():  # absent on ranks beyond the saved world size: they keep the
            # state seeded from runtime.seed (cgpt.train.checkpoints.universal, RNG)
            try:
                set_rng_state(torch.load(rng, weights_only=True))
            except Exception as e:  # noqa: BLE001 - any unreadable file is one message
                raise CgptError(
                    f"{rng} is not an RNG state this trainer wrote "
                    f"({e.__class__.__name__}); delete {folder} to resume from "
                    "the previous checkpoint"
                ) from None
        return state


class _WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine, except that ``load`` uses torch's restricted unpickler
    (``weights_only=True``: tensors, containers and plain values; no code runs) instead of
    DeepSpeed's full unpickling, with the few DeepSpeed types its files hold allowed by name.
    """

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        if os.environ.get(TRUST_ENV) == "1":
            return self._inner.load(path, map_location=map_location)
        return restricted_load(path, map_location=map_location)


def restricted_load(path, map_location=None, loader=None, how_to_trust: str = "resume with"):
    """``torch.load(path, weights_only=True)`` with the checkpoint allowlist; a file holding
    anything else is one CgptError naming the offending globals and the trust switch
    ("If you trust this run folder, <how_to_trust> CGPT_TRUST_CHECKPOINTS=1"). ``loader``:
    the real ``torch.load`` while cgpt.train.checkpoints.universal has it patched."""
    import pickle

    if os.environ.get(TRUST_ENV) == "1":
        return (loader or torch.load)(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return (loader or torch.load)(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
        detail = f" ({', '.join(unsafe)})" if unsafe else " or is not a torch.save file"
        raise CgptError(
            f"{path} holds objects outside the checkpoint allowlist{detail}; "
            f"not loaded. If you trust this run folder, {how_to_trust} "
            f"{TRUST_ENV}=1"
        ) from None


TRUST_ENV = "CGPT_TRUST_CHECKPOINTS"  # "1": DeepSpeed's own full unpickling on resume


def safe_globals() -> list:
    """The DeepSpeed types its ZeRO/bf16 optimizer files hold (listed with
    torch.serialization.get_unsafe_globals_in_checkpoint over ZeRO 0-3 x bf16/fp32):
    plain data classes and an enum, rebuilt from their fields; nothing of theirs runs."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]


def restricted_loads(engine) -> None:
    """Make ``engine.load_checkpoint`` read DeepSpeed's files without full unpickling."""
    if not isinstance(engine.checkpoint_engine, _WeightsOnlyLoads):
        engine.checkpoint_engine = _WeightsOnlyLoads(engine.checkpoint_engine)


def read_state(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CgptError(
            f"checkpoint {folder} is unreadable ({e}); delete it to resume from the previous one"
        ) from None


def _device_of(engine) -> torch.device:
    return next(engine.module.parameters()).device


# what torch's C++ writer says when a write into its zip file fails (a full disk, an I/O
# error): it raises RuntimeError, not OSError
_WRITE_FAILURES = ("writ", "space", "iostream", "inline_container", "unexpected pos", "errno")


def _is_write_error(e: BaseException) -> bool:
    return (
        isinstance(e, OSError)
        or isinstance(e.__context__, OSError)
        or any(w in str(e).lower() for w in _WRITE_FAILURES)
    )


def write_failure(e: BaseException, folder: Path) -> str:
    """A readable reason: the OS's words, or the free space when torch hid them."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return f"No space left on device ({free:,} bytes free)"
    return str(e).splitlines()[0] if str(e) else e.__class__.__name__


def fsync_folder(folder: Path) -> None:
    """fsync a folder; an error raises (unlike cgpt.model.files.fsync_dir): a checkpoint
    whose rename is not on disk is a failed save."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file this process can see under `folder`, then the folders."""
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        fsync_folder(d)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def local_weights_finite(module: torch.nn.Module) -> tuple[int, int]:
    """(non-finite tensors, tensors) among this rank's weights; under ZeRO-3 a parameter's
    local data is its partition ``ds_tensor``."""
    bad = total = 0
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t
        if t.numel():
            total += 1
            bad += int(not bool(torch.isfinite(t).all()))
    return bad, total
