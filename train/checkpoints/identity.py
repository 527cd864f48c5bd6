"""What a run trains on (``data.json``: each data role's folder and shard checksums), and
whether a checkpoint belongs to the run it sits in: ``--resume`` refuses changed data unless
``--allow-change data``, accepts moved data, and refuses a checkpoint from another run.
Details: docs/DESIGN-NOTES.md, checkpoints/identity.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError
from cgpt.train.config import config_diff, write_text_atomic

DATA_FILE = "data.json"
SPLITS = ("train", "val")
# what a checkpoint shares with every run that may resume it (a `cgpt branch` run changes
# the plan's length and schedule, a rewind the optimizer's settings: neither is compared)
CHECKPOINT_KEYS = ("plan.seq_len", "runtime.seed", "runtime.precision")


# ---------------------------------------------------------------------------- data identity
def data_roles(data: dict) -> dict[str, str]:
    """Role -> folder of a config's data section."""
    roles = {}
    if data.get("sources"):
        for s in data["sources"]:
            roles[f"data.sources.{s['name']}"] = str(s["path"])
    elif data.get("path"):
        roles["data.path"] = str(data["path"])
    for name, path in (data.get("val") or {}).items():
        roles[f"data.val.{name}"] = str(path)
    return roles


def data_identity(data: dict) -> dict:
    """Role -> {"path", "train": [sha256 per shard], "val": [...]} from each meta.json."""
    out = {}
    for role, folder in data_roles(data).items():
        path = Path(folder) / "meta.json"
        try:
            splits = json.loads(path.read_text())["splits"]
            out[role] = {
                "path": str(Path(folder).resolve()),
                **{s: [str(f["sha256"]) for f in splits[s]["files"]] for s in SPLITS},
            }
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CgptError(
                f"{path} is unreadable ({e.__class__.__name__}); re-run `cgpt prepare`"
            ) from None
    return out


def checksums(identity: dict) -> dict:
    """The identity without folder paths: what must not change under a run."""
    return {role: {s: v.get(s) for s in SPLITS} for role, v in identity.items()}


def read_identity(path: Path) -> dict | None:
    """A recorded data.json (None: absent, a run or checkpoint from before it existed)."""
    try:
        found = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CgptError(
            f"{path} is unreadable ({e.__class__.__name__}); it records the data the run "
            "started with"
        ) from None
    return found if isinstance(found, dict) else None


def write_identity(path: Path, identity: dict) -> None:
    write_text_atomic(path, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def compare(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(what changed, which folders moved with identical checksums)."""
    changed, moved = [], []
    for role in sorted(set(recorded) | set(current)):
        a, b = recorded.get(role), current.get(role)
        if a is None or b is None:
            changed.append(f"{role} {'added' if a is None else 'removed'}")
            continue
        splits = [s for s in SPLITS if a.get(s) != b.get(s)]
        if splits:
            changed.append(f"{' and '.join(splits)} of {role} ({b.get('path')})")
        elif a.get("path") != b.get("path"):
            moved.append(f"{role}: {a.get('path')} -> {b.get('path')}")
    return changed, moved


def without_data_paths(cfg: dict) -> dict:
    """A config dict whose data section names sources and val sets but not their folders
    (compared through their checksums instead)."""
    data = dict(cfg.get("data") or {})
    data.pop("path", None)
    if data.get("sources"):
        data["sources"] = [{k: v for k, v in s.items() if k != "path"} for s in data["sources"]]
    if data.get("val"):
        data["val"] = sorted(data["val"])
    return {**cfg, "data": data}


# ---------------------------------------------------------------------------- checkpoints
def foreign_checkpoint(folder: Path, state: dict, run_cfg: dict, known: list[dict]) -> str | None:
    """Why checkpoint ``folder`` is not one of this run's (None: it is). ``known``: the data
    identities the run trained on (the recorded one and those before an allowed change)."""
    step = int(folder.name.split("-")[1])
    inside = state.get("step")
    if not isinstance(inside, int) or inside != step:
        return f"it holds the state of step {inside}, not {step}"
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except FileNotFoundError:
        saved = None
    except (OSError, yaml.YAMLError) as e:
        return f"its config.yaml is unreadable ({e.__class__.__name__})"
    if isinstance(saved, dict):
        a, b = without_data_paths(saved), without_data_paths(run_cfg)
        keys = [
            k
            for k in config_diff(a, b, ("seed", "precision"))
            if k.split(".")[0] in ("model", "data") or k in CHECKPOINT_KEYS
        ]
        if keys:
            return f"its config differs in {', '.join(keys)}"
    data = read_identity(folder / DATA_FILE)
    if data is not None and known and all(checksums(data) != checksums(k) for k in known):
        return "it was trained on other data: the sha256 checksums in its data.json differ"
    return None
