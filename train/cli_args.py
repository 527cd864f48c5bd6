"""Command-line value parsing shared by the verbs (one definition each).

* ``check_positive``: the range check of a count or rate a user typed (``--seq-len``,
  ``--batch-seqs``, ``--lr``, ``--gpus``, ...).
* ``named_values``: ``NAME=VALUE`` items (``cgpt prepare --input NAME=SRC`` repeated, the items
  of ``cgpt plan --data NAME=DIR:WEIGHT,...``). A NAME uses letters, digits, ``_ . -``, the
  characters a mixture source or validation set may be named with (it ends up in metric names
  such as ``val_loss/NAME``); the VALUE is everything after the first ``=``.
* ``data_spec``: ``--data`` text -> the run config's data section fields.

Bad input raises CgptError with one line that names the flag.
"""

from __future__ import annotations

import math
import re

from cgpt.model.errors import CgptError

# a mixture source or validation set name (data.sources[].name, data.val keys, NAME= items):
# it ends up in metric names such as val_loss/NAME and folder names (prepare's OUT/NAME), so it
# never starts with '.': "." and ".." would name the output folder itself or its parent
NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
NAME_RULE = "letters, digits, _ . -, not starting with '.'"
# spelled as a name (dots anywhere): NAME_PATTERN is checked after the split, so that
# `--input ..=SRC` is refused as a bad name, not read as a source called "..=SRC"
NAME_VALUE = re.compile(r"([A-Za-z0-9_.-]+)=(.+)")


def check_positive(value, what: str, *, integer: bool = False):
    """``value`` if it is a positive finite number (an int when ``integer``), else CgptError
    '<what> must be a positive number|integer, got <value>'."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        kind = "integer" if integer else "number"
        raise CgptError(f"{what} must be a positive {kind}, got {value!r}")
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
