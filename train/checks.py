"""Value rules the library shares (one definition each): a count or rate must be a positive
finite number (``check_positive``), the names a mixture source or validation set may take
(``NAME_PATTERN``; they end up in metric names such as ``val_loss/NAME``), the ``hf:``
prefix of a Hub model source (``HF_PREFIX``), and
:class:`FieldError`, a refusal that names the library's fields for a front end to spell.

Parsing what a user typed (``NAME=VALUE`` items, ``--data`` text) is the CLI's:
cgpt.launch.args.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cgpt.model.errors import CgptError

# a mixture source or validation set name (data.sources[].name, data.val keys, NAME= items):
# it ends up in metric names such as val_loss/NAME and folder names (prepare's OUT/NAME), so it
# never starts with '.': "." and ".." would name the output folder itself or its parent
NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
NAME_RULE = "letters, digits, _ . -, not starting with '.'"

# a model source (init.source, --init-from, cgpt eval SRC) that names a Hugging Face Hub repo
HF_PREFIX = "hf:"


def is_positive(value, *, integer: bool = False) -> bool:
    """``value`` is a positive finite number (an int, not a bool, when ``integer``)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        and math.isfinite(value)
        and value > 0
    )


def check_positive(value, what: str, *, integer: bool = False):
    """``value`` if it is a positive finite number (an int when ``integer``), else CgptError
    '<what> must be a positive number|integer, got <value>'."""
    if not is_positive(value, integer=integer):
        kind = "integer" if integer else "number"
        raise CgptError(f"{what} must be a positive {kind}, got {value!r}")
    return value


class FieldError(CgptError):
    """A refusal that names fields of a library call (the planner's: PlanRequest's). The
    message is a ``str.format`` template in which ``{f.batch_seqs}`` names a field and other
    names are ``values``: ``str(e)`` names fields as themselves (``batch_seqs``); a front end
    names them its own way with :meth:`spelled` (`cgpt plan`: by its flags, ``--batch-seqs``)."""

    def __init__(self, template: str, **values) -> None:
        self.template, self.values = template, values
        super().__init__(self.spelled(str))

    def spelled(self, name: Callable[[str], str]) -> str:
        """The message with every field named ``name(field)``."""
        return self.template.format(f=_Names(name), **self.values)


class _Names:
    """``f.FIELD`` in a FieldError template -> ``name(FIELD)``."""

    def __init__(self, name: Callable[[str], str]) -> None:
        self._name = name

    def __getattr__(self, field: str) -> str:
        return self._name(field)
