"""Resume on another topology (world size or ZeRO stage) through DeepSpeed's universal
checkpoint format: rank 0 converts a checkpoint once with ``ds_to_universal`` into
``step-N/universal/`` (published by one rename), and the engine loads it with DeepSpeed's
universal loader; gaps between DeepSpeed 0.19's converter and loaders are closed here.
Layout, what an elastic resume keeps, and the gaps: docs/DESIGN-NOTES.md, checkpoints/universal.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

from cgpt.model.errors import CgptError
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.distributed import all_sum, barrier

UNIVERSAL = "universal"  # the tag (sub-folder of step-N) DeepSpeed loads
MARKER = "complete"
TMP_PREFIX = "tmp-universal-"
_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


# ---------------------------------------------------------------------------- deciding
def saved_topology(
    folder: Path, state: dict, run_cfg: dict | None = None, world_size: int = 1
) -> tuple[int, int]:
    """(world size, ZeRO stage) that wrote checkpoint ``folder``: from its trainer state
    (``zero_stage`` since elastic resume), else the checkpoint's config.yaml copy, else the
    run folder's config. A state without ``world_size`` counts as ``world_size``."""
    ws = int(state.get("world_size") or world_size)
    stage = state.get("zero_stage")
    if stage is None:
        try:
            cfg = yaml.safe_load((Path(folder) / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            cfg = run_cfg or {}
        stage = (cfg.get("runtime") or {}).get("zero_stage", 1)
    return ws, int(stage)


def needs_universal(folder: Path, saved: tuple[int, int], world_size: int, zero_stage: int) -> bool:
    """Whether resuming ``folder`` on (world_size, zero_stage) goes through a universal
    checkpoint; raises CgptError (one line) for a combination DeepSpeed cannot load."""
    old_ws, old_stage = saved
    if old_stage == zero_stage and (old_ws == world_size or zero_stage == 0):
        return False  # the same layout, or ZeRO-0 (every rank holds the whole state)
    if 0 in (old_stage, zero_stage):
        fix = "runtime.zero_stage=0" if old_stage == 0 else "runtime.zero_stage 1, 2 or 3"
        raise CgptError(
            f"checkpoint {folder} was written by {ranks_text(old_ws)} with ZeRO stage "
            f"{old_stage}; this run has {ranks_text(world_size)} with ZeRO stage {zero_stage}. "
            "DeepSpeed converts only between ZeRO stages 1-3 (a ZeRO-0 checkpoint keeps the "
            "optimizer in its model file, which ds_to_universal does not read, and ZeRO-0 "
            f"has no universal loader): resume with {fix}, on any number of ranks"
        )
    return True


def ranks_text(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


# ---------------------------------------------------------------------------- restricted reads
@contextlib.contextmanager
def restricted_torch_load():
    """While active, every ``torch.load`` (DeepSpeed's converter and universal loader call it
    with ``weights_only=False``) uses torch's restricted unpickler with the checkpoint
    allowlist instead (cgpt.train.checkpoints.checkpoint.restricted_load); CGPT_TRUST_CHECKPOINTS=1
    turns this off, as for ordinary resumes."""
    if os.environ.get(ckpt.TRUST_ENV) == "1":
        yield
        return
    real = torch.load

    def load(f, map_location=None, *args, **kwargs):
        return ckpt.restricted_load(f, map_location=map_location, loader=real)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


# ---------------------------------------------------------------------------- converting
def published(folder: Path) -> Path | None:
    """The checkpoint's universal folder when a whole conversion is there."""
    out = Path(folder) / UNIVERSAL
    return out if (out / MARKER).is_file() and (out / "zero").is_dir() else None


def _convert(src: Path, out: Path) -> None:
    """DeepSpeed's converter, in process (no worker pool), its console output kept back."""
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(src),
        output_folder=str(out),
        num_extract_workers=1,  # no process pool: stays under the restricted unpickler
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # cgpt's model declares no tensor-parallel patterns
    )
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            with restricted_torch_load():
                ds_to_universal.main(args)
    except CgptError:
        raise
    except Exception as e:  # noqa: BLE001 - DeepSpeed's asserts and errors become one line
        tail = buf.getvalue().strip().splitlines()[-3:]
        sys.stderr.write("\n".join(tail) + "\n" if tail else "")
        raise CgptError(
            f"DeepSpeed could not convert checkpoint {src} to the universal format "
            f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); resume "
            "with the world size and ZeRO stage that wrote it"
        ) from None


def _complete_layout(out: Path) -> None:
    """Make one universal folder loadable by ZeRO-1, -2 and -3 engines (module docstring)."""
    from deepspeed import __version__ as deepspeed_version
    from deepspeed.checkpoint.constants import (
        CAT_DIM,
        DS_VERSION,
        OPTIMIZER_STATE_DICT,
        PARAM,
        PARAM_GROUPS,
        PARAM_SHAPES,
    )

    have = [out / n for n in _MODEL_FILES if (out / n).is_file()]
    if not have:
        raise CgptError(f"DeepSpeed's conversion in {out} holds no model states file")
    for name in _MODEL_FILES:
        if not (out / name).exists():
            try:
                os.link(have[0], out / name)
            except OSError:
                shutil.copy2(have[0], out / name)
    zero = out / "zero"
    opt_path = zero / "optimizer_state.pt"
    opt = ckpt.restricted_load(opt_path, map_location="cpu")
    steps = []
    for p in zero.iterdir():
        if (p / "step.pt").is_file():
            steps.append(ckpt.restricted_load(p / "step.pt", map_location="cpu"))
    inner = opt.get(OPTIMIZER_STATE_DICT)
    if inner is None:  # a ZeRO-1/2 source: give ZeRO-3 loaders their step and groups
        if not steps:
            raise CgptError(f"DeepSpeed's conversion in {out} records no optimizer step")
        opt[OPTIMIZER_STATE_DICT] = {
            "state": {0: {"step": steps[0]}},
            "param_groups": opt[PARAM_GROUPS],
        }
        torch.save(opt, opt_path)
    elif not steps:  # a ZeRO-3 source: give ZeRO-1/2 loaders a step per parameter ...
        step = inner["state"][0]["step"]
        meta = ckpt.restricted_load(have[0], map_location="cpu")
        shapes = {k: v for group in meta[PARAM_SHAPES] for k, v in group.items()}
        for p in zero.iterdir():
            if (p / "exp_avg.pt").is_file():
                torch.save(step, p / "step.pt")
            for key in ("fp32", "exp_avg", "exp_avg_sq"):  # ... and {param: full shape} files
                f = p / f"{key}.pt"
                t = ckpt.restricted_load(f, map_location="cpu") if f.is_file() else None
                if torch.is_tensor(t):
                    torch.save({PARAM: t.view(shapes[p.name]), CAT_DIM: 0}, f)
    if not opt.get(DS_VERSION):  # ZeRO-3 writes none; ZeRO-1/2 loaders require one
        meta = ckpt.restricted_load(have[0], map_location="cpu")
        opt[DS_VERSION] = meta.get(DS_VERSION) or deepspeed_version
        torch.save(opt, opt_path)


def ensure_universal(folder: Path, rank: int, device: torch.device) -> Path:
    """The universal conversion of checkpoint ``folder``, converting it (rank 0, once) if
    needed; every rank calls this and gets the folder, or the same CgptError."""
    folder = Path(folder)
    error: CgptError | None = None
    if rank == 0 and (published(folder) is None or broken(folder)):
        try:
            _publish(folder)
        except CgptError as e:
            error = e
        except OSError as e:
            error = CgptError(
                f"could not write the universal conversion of {folder}: "
                f"{ckpt.write_failure(e, folder.parent)}; nothing else was written"
            )
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, not just rank 0
            error = CgptError(
                f"could not convert checkpoint {folder} to the universal format "
                f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "resume with the world size and ZeRO stage that wrote it"
            )
    barrier()  # the others wait for rank 0 (bounded by the collective timeout)
    if all_sum([float(error is not None)], device)[0]:
        raise error or CgptError(
            f"rank 0 could not convert checkpoint {folder} to the universal format"
        )
    out = published(folder)
    if out is None:  # a shared file system that does not show rank 0's folder here
        raise CgptError(
            f"rank 0 converted checkpoint {folder} but this rank ({rank}) does not see "
            f"{folder / UNIVERSAL}; the checkpoints folder must be shared by all nodes"
        )
    return out


def broken(folder: Path) -> bool:
    """A published conversion with a missing, truncated or corrupted file (converted
    again). The marker lists every file of the conversion (older ones: no list)."""
    import zipfile

    out = published(folder)
    if out is None:
        return False
    try:
        listed = json.loads((out / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return True
    if isinstance(listed, dict) and ckpt.missing_files(out, listed):
        return True
    for f in out.rglob("*.pt"):
        try:
            with zipfile.ZipFile(f) as z:
                if z.testzip() is not None:
                    return True
        except (OSError, zipfile.BadZipFile, EOFError):
            return True
    return False


def _publish(folder: Path) -> None:
    root = folder.parent
    tmp = root / f"{TMP_PREFIX}{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)  # left over by an interrupted conversion
    out, old = tmp / UNIVERSAL, folder / UNIVERSAL
    if old.exists():  # a broken earlier conversion: DeepSpeed's converter would read its
        # model-states files as the checkpoint's own ("file count 2 does not match")
        (old / MARKER).unlink(missing_ok=True)  # unpublished first, then removed
        shutil.rmtree(old)
    try:
        _convert(folder, out)
        _complete_layout(out)
        (tmp / "latest_universal").unlink(missing_ok=True)  # DeepSpeed's, pointing at tmp
        state = ckpt.read_state(folder)
        marker = {
            "source": folder.name,
            "world_size": state.get("world_size"),
            "files": ckpt.manifest(out),  # a file deleted later means: convert again
        }
        ckpt.write_text_atomic(out / MARKER, json.dumps(marker) + "\n")
        ckpt.fsync_tree(tmp)
        os.rename(out, old)  # the publish: one atomic rename
        ckpt.write_text_atomic(folder / "latest_universal", UNIVERSAL)
        ckpt.fsync_folder(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- loading
def load(engine, universal: Path):
    """``engine.load_checkpoint`` of the universal folder (DeepSpeed's load_universal switch
    on for this call only); returns DeepSpeed's load path (None: it could not load)."""
    ckpt.restricted_loads(engine)
    cfg = engine._config
    before = cfg.load_universal_checkpoint
    opt = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer
    params = [list(g["params"]) for g in opt.param_groups]
    cfg.load_universal_checkpoint = True
    try:
        with restricted_torch_load(), _quiet_deepspeed():
            path, _ = engine.load_checkpoint(
                str(universal.parent), tag=universal.name, load_lr_scheduler_states=False
            )
        if path is not None:
            restore_param_groups(opt, params, universal)
    finally:
        cfg.load_universal_checkpoint = before
    return path


def restore_param_groups(opt, params: list[list], universal: Path) -> None:
    """Repair what DeepSpeed 0.19's ZeRO-3 universal loader leaves behind: it gives every
    parameter group group 0's hyperparameters (weight decay ...), and one ``step`` tensor
    to all groups, which the fused AdamW then advances once per group and step (measured:
    the losses after the first resumed step drift by 1e-2). Each group gets its saved
    hyperparameters and parameter list back, each state its own step tensor."""
    from deepspeed.checkpoint.constants import PARAM_GROUPS

    saved = ckpt.restricted_load(universal / "zero" / "optimizer_state.pt", map_location="cpu")
    groups = saved.get(PARAM_GROUPS) or []
    if len(groups) != len(opt.param_groups):
        raise CgptError(
            f"the universal checkpoint {universal} has {len(groups)} parameter groups but "
            f"the optimizer has {len(opt.param_groups)}; the model changed"
        )
    for mine, theirs, own in zip(opt.param_groups, groups, params):
        for key, value in theirs.items():
            if key != "params":
                mine[key] = value
        mine["params"] = own
    for state in opt.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


@contextlib.contextmanager
def _quiet_deepspeed():
    """DeepSpeed warns "MPU is not provided" for every universal load without tensor
    parallelism (cgpt has none): keep its logger to errors meanwhile."""
    from deepspeed.utils import logger

    level = logger.level
    logger.setLevel(max(level, 40))
    try:
        yield
    finally:
        logger.setLevel(level)
