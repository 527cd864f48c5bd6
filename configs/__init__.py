"""cgpt.configs: the run and sweep configs shipped with cgpt (installed as package data, so
`cgpt demo` finds its config from a wheel install as well as from a clone).

Every verb that takes a config file also takes a shipped config's name, from any folder
(:func:`resolve_config`): ``cgpt train cerebras-gpt-111m``, ``cgpt sweep sweep-cpu``;
``cgpt configs`` lists them (:func:`available`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from cgpt.model.errors import CgptError

FOLDER = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """Path of a shipped config file, e.g. ``shipped("demo-cpu.yaml")``."""
    return FOLDER / name


def names() -> list[str]:
    """The shipped configs' names (their file names without .yaml), sorted."""
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def resolve_config(arg: str) -> str:
    """What a verb's config argument names: an existing file or folder as given, else the
    shipped config of that name (:func:`find`)."""
    return arg if Path(arg).exists() else str(find(arg))


def find(name: str) -> Path:
    """The shipped config called ``name`` (``cerebras-gpt-111m``, with or without ``.yaml``,
    any case); else a :class:`CgptError` that names the closest ones."""
    key = name.lower().removesuffix(".yaml")
    for known in names():
        if known.lower() == key:
            return shipped(known + ".yaml")
    close = difflib.get_close_matches(key, names(), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise CgptError(
        f"{name!r} is neither a file nor a config shipped with cgpt{hint} "
        "(`cgpt configs` lists them)"
    )


def describe(name: str) -> str:
    """One line about a shipped config: the first sentence of its header comment, else what
    its ``plan`` section says (the μP configs are written without a comment)."""
    lines = shipped(name + ".yaml").read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    # the first sentence (up to ". " or a header line that ends in "." or ":"), without
    # parenthetical references
    text = ""
    m = re.match(r"(.+?)(\.\s|[.:]$)", "\n".join(header), re.S)
    if m:
        text = " ".join(re.sub(r"\s*\([^)]*\)", "", m.group(1)).split())
    return _shorten(text) if text else _from_plan(name)


def _from_plan(name: str) -> str:
    data = yaml.safe_load(shipped(name + ".yaml").read_text(encoding="utf-8")) or {}
    plan, model = data.get("plan") or {}, data.get("model") or {}
    mup = "μP " if model.get("mup") else ""
    params, tokens = plan.get("params"), plan.get("tokens")
    if not (params and tokens):
        return "run config"
    return f"{mup}run config: {params / 1e6:,.0f}M parameters, {tokens / 1e9:.2f}B tokens"


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + " …"


def available() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped config."""
    return [(name, describe(name)) for name in names()]
