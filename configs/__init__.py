"""cgpt.configs: the run and sweep configs shipped with cgpt (installed as package data, so
`cgpt demo` finds its config from a wheel install as well as from a clone)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """Path of a shipped config file, e.g. ``shipped("demo-cpu.yaml")``."""
    return FOLDER / name
