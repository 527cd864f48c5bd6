"""One model from a DeepSpeed checkpoint the trainer wrote, and the restricted torch.load.

A checkpoint folder ``RUN/checkpoints/step-N`` as :class:`cgpt.train.checkpoints.checkpoint.
Checkpointer` publishes it (DeepSpeed's files, ``config.yaml``, ``trainer_state.json``, the
``complete`` marker) is consolidated by :func:`consolidate_checkpoint`: ZeRO 1-3 through
DeepSpeed's own ``zero_to_fp32`` (the fp32 master weights, gathered from every rank's optimizer
partition), ZeRO 0 from the module weights in ``mp_rank_00_model_states.pt``. The model is
rebuilt from the run config saved with the checkpoint; every tensor must be finite.
DeepSpeed's files are read with torch's restricted unpickler (``weights_only=True``) and the
DeepSpeed types allowed by name in :mod:`cgpt.train.checkpoints.checkpoint`, exactly as ``--resume``
reads them; ``CGPT_TRUST_CHECKPOINTS=1`` opts into DeepSpeed's full unpickling.

Which folder a run, a model file or ``hf:NAME`` names is :mod:`cgpt.train.source`'s business.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT
from cgpt.model.io import LM_HEAD, WTE, build_from_state_dict
from cgpt.train.checkpoints import checkpoint as ckpt
from cgpt.train.config import parse_run_config, read_yaml
from cgpt.train.distributed import import_deepspeed

# prefixes wrappers put on parameter names (DeepSpeed/DDP's "module.", torch.compile's)
_PREFIXES = ("module.", "_orig_mod.")


def check_complete(folder: Path) -> None:
    """Refuse a checkpoint folder that was never published or has lost a file since."""
    if not ((folder / ckpt.COMPLETE).is_file() and (folder / ckpt.STATE).is_file()):
        raise CgptError(
            f"{folder} is not a complete checkpoint (no '{ckpt.COMPLETE}' marker or "
            f"{ckpt.STATE}: a save that was interrupted or is still running); "
            "export a published checkpoints/step-N folder"
        )
    lost = ckpt.missing_files(folder)  # a file deleted since the save (manifest.json)
    if lost:
        raise CgptError(
            f"checkpoint {folder} is incomplete ({lost}); export another checkpoints/step-N folder"
        )


# ---- consolidation -------------------------------------------------------------------------
def consolidate_checkpoint(step_dir: str | os.PathLike) -> GPT:
    """The GPT of a checkpoint folder the trainer wrote (any ZeRO stage, any rank count):
    fp32 master weights for ZeRO 1-3, the module weights for ZeRO 0; dtype as stored."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        raise CgptError(f"checkpoint {step_dir} does not exist or is not a folder")
    check_complete(step_dir)
    return consolidate_step(step_dir)[0]


def consolidate_step(step_dir: Path) -> tuple[GPT, str]:
    """(the GPT of a complete checkpoint folder, how it was consolidated: one phrase)."""
    cfg = run_config_for(step_dir)
    optim = sorted(step_dir.glob("*_optim_states.pt"))
    zero3_models = sorted(step_dir.glob("zero_pp_rank_*_model_states.pt"))
    stage = cfg.runtime.zero_stage
    with _quiet():
        if optim:
            sd = _zero_state_dict(step_dir)
            info = (
                f"ZeRO-{stage}, {len(optim)} rank{'s' if len(optim) > 1 else ''}, "
                "consolidated by DeepSpeed's zero_to_fp32"
            )
        elif zero3_models or stage >= 1:
            raise CgptError(
                f"checkpoint {step_dir} has no *_optim_states.pt files, which hold "
                f"the weights of a ZeRO-{stage} run: incomplete checkpoint"
            )
        elif (step_dir / "mp_rank_00_model_states.pt").is_file():
            sd = _module_state_dict(step_dir / "mp_rank_00_model_states.pt")
            info = "ZeRO-0, the module weights"
        else:
            raise CgptError(
                f"checkpoint {step_dir} has no DeepSpeed model states file "
                "(mp_rank_00_model_states.pt)"
            )
    sd = _untie(_strip_prefixes(sd), step_dir)
    check_finite(sd, step_dir)
    return build_from_state_dict(_gpt_config(cfg), sd, True, str(step_dir)), info


def _gpt_config(cfg):
    """The GPTConfig of a RunConfig (its model section is a GPTConfig, or builds one)."""
    model = cfg.model
    return model.build() if hasattr(model, "build") else model


def run_config_for(step_dir: Path):
    """The RunConfig saved with the checkpoint (``step-N/config.yaml``, else the run's)."""
    for p in (step_dir / "config.yaml", step_dir.parent.parent / "config.yaml"):
        if p.is_file():
            return parse_run_config(read_yaml(p), str(p))
    raise CgptError(
        f"checkpoint {step_dir} has no config.yaml (nor has its run folder "
        f"{step_dir.parent.parent}): the model's shape is unknown"
    )


def _zero_state_dict(step_dir: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's zero_to_fp32 over every rank's files, read with the restricted loader."""
    # deferred: deepspeed is slow to import; only a ZeRO checkpoint's consolidation needs it
    from deepspeed.utils import zero_to_fp32

    try:
        with restricted_torch_load(zero_to_fp32):
            lazy = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                str(step_dir.parent), tag=step_dir.name, lazy_mode=True
            )
            # lazy: ZeRO-3 parameters are gathered one at a time; a shared (tied) parameter
            # is the same object under both names and stays one tensor
            out, seen = {}, {}
            for name, t in lazy.items():
                if id(t) not in seen:
                    seen[id(t)] = t.contiguous()
                out[name] = seen[id(t)]
            return out
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        raise CgptError(
            f"DeepSpeed could not consolidate checkpoint {step_dir}: {_first_line(e)}"
        ) from None


def _module_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = restricted_load(path, map_location="cpu")
    module = state.get("module") if isinstance(state, dict) else None
    if not isinstance(module, dict):
        raise CgptError(
            f"{path} has no module weights ('module'): not a DeepSpeed model states file"
        )
    return dict(module)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _untie(sd: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """The tied head is the embedding: keep it once, as transformer.wte.weight."""
    head = sd.pop(LM_HEAD, None)
    if head is None:
        return sd
    if WTE not in sd:  # DeepSpeed named the shared parameter after the head
        sd[WTE] = head
    elif head is not sd[WTE] and not torch.equal(head, sd[WTE]):
        raise CgptError(
            f"checkpoint {where}: {LM_HEAD} differs from {WTE}, but cgpt models tie them"
        )
    return sd


def check_finite(sd: dict[str, torch.Tensor], where) -> None:
    """Refuse weights holding NaN or Inf (a diverged run), naming how many tensors do."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CgptError(
            f"{where}: {len(bad)} of {len(sd)} tensors hold non-finite values "
            f"(NaN/Inf), e.g. {', '.join(bad[:3])}; not exported (the run diverged "
            "before this save: export an earlier checkpoint)"
        )


# ---- reading DeepSpeed's files -------------------------------------------------------------
def restricted_load(path, map_location=None, weights_only=None, mmap=None, **_ignored):
    """torch.load through the restricted unpickler with DeepSpeed's allow-listed types
    (checkpoints.checkpoint), or DeepSpeed's full unpickling with CGPT_TRUST_CHECKPOINTS=1.

    A BF16_Optimizer state (bf16 + ZeRO-1, the default precision) carries no ``zero_stage``;
    the stage is filled in from the saved DeepSpeed config, so DeepSpeed's ZeRO-1/2 merge
    (the same flat fp32 partitions) consolidates it.
    """
    load = functools.partial(torch.load, mmap=mmap)
    try:
        obj = ckpt.restricted_load(path, map_location, loader=load, how_to_trust="set")
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CgptError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_line(e)}"
        ) from None
    _fill_bf16_zero_stage(obj)
    return obj


def _fill_bf16_zero_stage(obj) -> None:
    # deferred: deepspeed is slow to import; only DeepSpeed's own files need its constants
    from deepspeed.checkpoint.constants import (
        OPTIMIZER_STATE_DICT,
        SINGLE_PARTITION_OF_FP32_GROUPS,
        ZERO_STAGE,
    )

    osd = obj.get(OPTIMIZER_STATE_DICT) if isinstance(obj, dict) else None
    if isinstance(osd, dict) and SINGLE_PARTITION_OF_FP32_GROUPS in osd and ZERO_STAGE not in osd:
        zero = (obj.get("ds_config") or {}).get("zero_optimization") or {}
        osd[ZERO_STAGE] = int(zero.get("stage", 1)) if isinstance(zero, dict) else 1


class _TorchWithRestrictedLoad:
    """``torch`` as one module sees it, except that ``load`` is :func:`restricted_load`."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return restricted_load if name == "load" else getattr(self._real, name)


@contextlib.contextmanager
def restricted_torch_load(module) -> Iterator[None]:
    """Make ``module``'s ``torch.load`` calls (DeepSpeed's zero_to_fp32 loads with
    ``weights_only=False``) go through :func:`restricted_load`; only that module changes."""
    real = module.torch
    module.torch = _TorchWithRestrictedLoad(real)
    try:
        yield
    finally:
        module.torch = real


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DeepSpeed's import banner, prints and progress bars off the console (shown only if
    something other than a CgptError escapes, to help with a bug report)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            import_deepspeed()
            yield
    except CgptError:
        raise
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


__all__ = [
    "check_complete",
    "check_finite",
    "consolidate_checkpoint",
    "consolidate_step",
    "restricted_load",
    "restricted_torch_load",
    "run_config_for",
]
