"""Model files and safe, atomic file handling shared by the HF converter and the CLI.

A cgpt model file is ONE ``.safetensors`` file: the parameters in our (nn.Linear) naming,
the tied embedding stored once, and the GPTConfig as JSON in the safetensors metadata.
Loading never unpickles (safetensors; HF ``pytorch_model.bin`` only through
``torch.load(weights_only=True)``, which refuses anything but tensors), and every writer
builds its output under a temporary name beside the target and renames it at the end, so a
failed or interrupted write never leaves a half-written file or folder that looks valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from cgpt.model import files
from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT

FORMAT = "cgpt-model"  # safetensors metadata "format_name"; bump VERSION on layout changes
VERSION = "1"
PICKLE_MSG = "pickle checkpoints are not loaded (they can run code); convert to safetensors"
LM_HEAD = "lm_head.weight"
WTE = "transformer.wte.weight"


# ---- reading ------------------------------------------------------------------------------
def _looks_like_pickle(path: Path) -> bool:
    """torch.save writes a zip ('PK') or a raw pickle (protocol byte 0x80). A safetensors
    file starts with its header's length (u64, little-endian), whose first byte may be
    0x80 too, then the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def check_file(path: str | os.PathLike, what: str = "model file") -> Path:
    """The path as a Path if it is an existing regular file, else a CgptError naming it."""
    p = Path(path)
    if not p.exists():
        raise CgptError(f"{what} {p} does not exist")
    if not p.is_file():
        raise CgptError(f"{what} {p} is not a file")
    return p


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, metadata) of a safetensors file; CgptError if missing/pickle/corrupt."""
    p = check_file(path)
    if _looks_like_pickle(p):
        raise CgptError(f"{p} is a pickle file: {PICKLE_MSG}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CgptError(
            f"{p} is not a readable safetensors file (truncated or corrupt?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return tensors, meta


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A HF ``pytorch_model.bin`` through the restricted unpickler (tensors only, no code)."""
    import pickle

    with open(check_file(path), "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # mmap works only for the zip format
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        raise CgptError(
            f"{path} holds objects other than tensors, refused ({PICKLE_MSG}): "
            f"{str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CgptError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CgptError(f"{path} is not a state dict of tensors")
    return sd


# ---- writing ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``, else vanishes.

    An existing ``out`` is refused unless ``force``; then the old folder is renamed away, the
    new one renamed in and the old one deleted, so ``out`` is never half-written. Temporary
    folders that a killed writer left beside ``out`` are removed first (files.remove_stale),
    and the new folder gets the umask's mode as it is published.
    """
    out = Path(out)
    _check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.remove_stale(out)
    held = files.HeldTempDir(out)
    try:
        yield held.path
        files.make_public(held.path)
        _install(held.path, out, force)
    except BaseException:
        shutil.rmtree(held.path, ignore_errors=True)
        raise
    finally:
        held.release()


def _check_target(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise CgptError(f"{out} already exists; pass --force (force=True) to replace it")


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Rename tmp to out; an existing out (force) is moved away first and deleted after (a
    link at out is moved and unlinked, never followed)."""
    old = None
    if out.exists() or out.is_symlink():
        _check_target(out, force)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    files.fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_file_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """safetensors save to a temporary name in the same folder, then rename over ``path``
    (with the umask's mode: files.atomic_path)."""
    from safetensors.torch import save_file

    with files.atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


# ---- model files --------------------------------------------------------------------------
def wte_weight(model: GPT) -> torch.Tensor:
    """The token embedding's weight (typed: ModuleDict attributes are Tensor | Module)."""
    wte = model.transformer["wte"]
    assert isinstance(wte, torch.nn.Embedding)
    return wte.weight


def is_tied(model: GPT) -> bool:
    return model.lm_head.weight is wte_weight(model)


def save_model(model: GPT, path: str | os.PathLike, force: bool = True) -> Path:
    """Write ``model`` as one cgpt ``.safetensors`` file (config in metadata), atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CgptError(f"model files end in .safetensors, got {path}")
    _check_target(path, force)
    tied = is_tied(model)
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == LM_HEAD)
    }  # the tied head is the embedding: store once
    meta = {
        "format": "pt",
        "format_name": FORMAT,
        "version": VERSION,
        "config": json.dumps(model.config.to_dict()),
        "tied": json.dumps(tied),
    }
    save_file_atomic(tensors, path, meta)
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """A GPT from a file written by :func:`save_model` (dtype as stored)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format_name") != FORMAT:
        raise CgptError(
            f"{path} is not a cgpt model file (no cgpt config in its metadata); "
            "for a Hugging Face folder use `cgpt import-hf`"
        )
    if meta.get("version") != VERSION:
        raise CgptError(
            f"{path} is cgpt model format version {meta.get('version')}; "
            f"this cgpt reads version {VERSION}"
        )
    try:
        cfg = GPTConfig.from_dict(json.loads(meta["config"]))
        tied = bool(json.loads(meta.get("tied", "true")))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CgptError(f"{path}: unreadable model config in metadata ({e})") from None
    return build_from_state_dict(cfg, tensors, tied, str(path), device)


def build_from_state_dict(
    cfg: GPTConfig,
    sd: dict[str, torch.Tensor],
    tied: bool,
    where: str,
    device: str | torch.device = "cpu",
) -> GPT:
    """GPT(cfg) holding exactly the tensors in ``sd`` (our naming); no random init is run.

    Shapes and key sets are checked first so a mismatch is one clear line, not a traceback.
    """
    with torch.device("meta"):
        model = GPT(cfg)  # meta: no memory, no init cost; every tensor comes from sd
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    expected = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if not (tied and k == LM_HEAD)
    }
    check_keys_and_shapes(sd, expected, where)
    sd = {k: v.to(device) for k, v in sd.items()}
    if tied:
        sd[LM_HEAD] = sd[WTE]
    model.load_state_dict(sd, assign=True)
    if tied:  # assign=True wraps each key in its own Parameter: tie the objects again
        model.lm_head.weight = wte_weight(model)
    return model


def check_keys_and_shapes(
    sd: dict[str, torch.Tensor], expected: dict[str, tuple], where: str
) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) e.g. {unexpected[:3]}")
        raise CgptError(f"{where}: weights do not match the config: {'; '.join(parts)}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CgptError(
                f"{where}: {k} has shape {tuple(sd[k].shape)} but the config implies {shape}"
            )
        if not sd[k].is_floating_point():
            raise CgptError(f"{where}: {k} has dtype {sd[k].dtype}; weights must be floating point")


__all__ = [
    "save_model",
    "load_model",
    "read_safetensors",
    "read_torch_weights",
    "atomic_dir",
    "build_from_state_dict",
    "check_keys_and_shapes",
    "PICKLE_MSG",
]
