"""Declarative argparse options: a verb's options as a table of (flags, keywords) rows,
added in order, so that a parser reads as data rather than as one long function."""

from __future__ import annotations

from collections.abc import Iterable

Option = tuple[tuple[str, ...], dict]


def add_options(parser, options: Iterable[Option]) -> None:
    """``parser.add_argument(*flags, **keywords)`` for every row (a parser or a group)."""
    for flags, keywords in options:
        parser.add_argument(*flags, **keywords)
