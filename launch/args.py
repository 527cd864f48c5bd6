"""Command-line value parsing shared by the verbs (one definition each): the CLI turns what
a user typed into typed values for the library, and its messages name the flag.

* ``parse_count``: ``400M``, ``1.3B``, ``4e8`` -> a positive number.
* ``named_values``: ``NAME=VALUE`` items (``cgpt prepare --input NAME=SRC`` repeated, the items
  of ``cgpt plan --data NAME=DIR:WEIGHT,...``). A NAME follows cgpt.train.checks.NAME_PATTERN;
  the VALUE is everything after the first ``=``.
* ``data_spec``: ``--data`` text -> the run config's data section fields.

Bad input raises CgptError with one line that names the flag.
"""

from __future__ import annotations

import math
import re

from cgpt.model.errors import CgptError
from cgpt.train.checks import NAME_PATTERN, NAME_RULE

# spelled as a name (dots anywhere): NAME_PATTERN is checked after the split, so that
# `--input ..=SRC` is refused as a bad name, not read as a source called "..=SRC"
NAME_VALUE = re.compile(r"([A-Za-z0-9_.-]+)=(.+)")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, what: str) -> float:
    """'400M', '1.3B', '4e8', '2.5T' -> a positive finite number."""
    m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", str(text), re.I)
    if not m:
        raise CgptError(f"{what}: expected a number such as 400M, 1.3B or 4e8, got {text!r}")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise CgptError(f"{what} must be a positive number, got {text!r}")
    return value


def split_name(text: str) -> tuple[str, str] | None:
    """``'NAME=VALUE'`` -> ``(NAME, VALUE)``; None when ``text`` is not of that form."""
    m = NAME_VALUE.fullmatch(text)
    return (m.group(1), m.group(2)) if m else None


def named_values(items: list[str], flag: str, form: str, example: str) -> list[tuple[str, str]]:
    """Every item as ``(NAME, VALUE)``, the names unique. ``form`` (e.g. ``NAME=SRC``) and
    ``example`` go into the message for an item that is not ``NAME=VALUE``."""
    pairs = [split_name(item) for item in items]
    for item, pair in zip(items, pairs):
        if pair is None:
            raise CgptError(f"{flag} {item!r}: expected {form} (NAME: {NAME_RULE}), e.g. {example}")
        if not re.fullmatch(NAME_PATTERN, pair[0]):
            raise CgptError(f"{flag} {item!r}: the name {pair[0]!r} may use {NAME_RULE}")
    names = [p[0] for p in pairs if p]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CgptError(f"{flag} names must be unique; repeated: {', '.join(dup)}")
    return [p for p in pairs if p]


def data_spec(text: str) -> dict:
    """``--data``: a folder (``{"path": DIR}``) or a mixture ``NAME=DIR:WEIGHT,...``
    (``{"sources": [{name, path, weight}, ...]}``; a DIR may hold ':' but not ',')."""
    if "=" not in text:
        return {"path": text}
    example = "web=data/web:0.7,code=data/code:0.3"
    sources = []
    for name, rest in named_values(text.split(","), "--data", "NAME=DIR:WEIGHT,...", example):
        path, colon, weight = rest.rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = None
        if not (colon and path) or w is None:
            raise CgptError(
                f"--data {text!r}: expected a folder or NAME=DIR:WEIGHT,... (e.g. {example}); "
                f"cannot read {name}={rest!r}"
            )
        if not (math.isfinite(w) and w > 0):
            raise CgptError(f"--data: source {name!r} has weight {weight}; weights must be > 0")
        sources.append({"name": name, "path": path, "weight": w})
    return {"sources": sources}
